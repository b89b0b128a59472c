"""Keys go only where they belong, and credentials appear nowhere but on the wire.

One unique secret is planted in every place a user can put one (OPENAI_API_KEY, ANTHROPIC_API_KEY, a
variable named by `api_key_env`, URL user-info, a URL query parameter); calls run through loopback
servers, some succeed, some fail (400, 401 echoing the key, an unreachable URL); then the secret is
searched for in identities, specs, dumps, logs, error texts and the cache file's bytes.
"""
from __future__ import annotations

import base64
import logging
import uuid

import pytest

from bezoar.config import ModelConfig, load_recipe
from bezoar.errors import BezoarError
from bezoar.llm.cache import CachedModel, CallCache
from bezoar.llm.endpoints import Endpoint, provider_host, public_spec, public_url
from bezoar.llm.protocol import Sampling
from bezoar.llm.specs import build_backend, parse_spec
from servers import FaultServer, free_port

FAST = {"retry_backoff_s": 0.01, "timeout_s": 5.0, "max_retries": 1}
PROMPTS = [[{"role": "user", "content": f"Say {word}."}] for word in ("yes", "no", "maybe")]


def test_public_url_strips_user_info_and_secret_parameters_only():
    assert public_url("https://user:tok@host:8443/v1?api-key=S&api-version=2024-06-01") == \
        "https://host:8443/v1?api-version=2024-06-01"
    assert public_url("http://tok@127.0.0.1:8000/v1?key=S&access_token=T&deployment=d1") == \
        "http://127.0.0.1:8000/v1?deployment=d1"
    assert public_spec("openai:m@https://u:p@a/v1,https://b/v1?key=k") == "openai:m@https://a/v1,https://b/v1"
    assert public_spec("local:some/dir") == "local:some/dir"
    endpoint = Endpoint.parse("https://us%40r:p%2Fw@host/v1/?api-key=S3CRET&v=1")
    assert endpoint.base == "https://host/v1" and endpoint.auth == ("us@r", "p/w")
    assert endpoint.params == (("api-key", "S3CRET"), ("v", "1")) and endpoint.public == "https://host/v1/?v=1"


def test_provider_keys_go_to_the_provider_host_only():
    assert provider_host("openai", "https://api.openai.com/v1")
    assert provider_host("anthropic", "https://api.anthropic.com")
    for url in ("https://api.openai.com.evil.example/v1", "http://api.openai.com/v1",
                "https://evil.example/api.openai.com/v1", "https://api.openai.com:8443/v1", "http://127.0.0.1:8000/v1"):
        assert not provider_host("openai", url), url


def test_a_secret_planted_everywhere_is_sent_where_it_belongs_and_shown_nowhere(monkeypatch, tmp_path, caplog):
    secret = f"bz-secret-{uuid.uuid4().hex}"
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ROLE_KEY"):
        monkeypatch.setenv(name, secret)
    caplog.set_level(logging.DEBUG)  # httpx logs every request URL at INFO, httpcore more at DEBUG
    plain, named, userinfo, query = FaultServer([]), FaultServer(["401"]), FaultServer([]), FaultServer(["400"])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    roles = {  # spec, api_key_env
        "plain-openai": (f"openai:m@{plain.url}/v1", None),
        "plain-anthropic": (f"anthropic:m@{plain.url}", None),
        "named": (f"openai:m@{named.url}/v1", "ROLE_KEY"),
        "userinfo": (f"openai:m@http://user:{secret}@{userinfo.url.removeprefix('http://')}/v1", None),
        "query": (f"openai:m@{query.url}/v1?api-key={secret}&api-version=2024", None),
        "dead": (f"openai:m@http://user:{secret}@{dead.removeprefix('http://')}?key={secret}", None),
    }
    cache = CallCache(tmp_path / "calls.sqlite")
    shown: list[str] = []  # every text a user could see
    try:
        for role, (spec, key_env) in roles.items():
            config = ModelConfig(spec=spec, api_key_env=key_env, **FAST)
            model = CachedModel(build_backend(config), cache, role=role)
            shown += [model.identity, str(parse_spec(spec)), config.model_dump_json(), repr(config.model_dump())]
            try:
                replies = model.chat(PROMPTS, Sampling(max_new_tokens=4))
                shown += [r.error or "" for r in replies]
            except BezoarError as error:
                shown.append(str(error))
        bad = f"openai:@http://u:{secret}@h/v1?key={secret}"  # errors about a spec echo it
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"models:\n  teacher: {bad}\n")
        for attempt in (lambda: ModelConfig.from_option("--teacher", bad), lambda: load_recipe(recipe)):
            with pytest.raises(BezoarError) as bad_spec:
                attempt()
            assert "names no model" in str(bad_spec.value)
            shown.append(str(bad_spec.value))
        recipe.unlink()
    finally:
        for server in (plain, named, userinfo, query):
            server.close()

    # What each server received: a provider's default key never left for a loopback URL.
    assert len(plain.seen) == 6 and all("Authorization" not in s["headers"] and "x-api-key" not in s["headers"]
                                        for s in plain.seen)
    assert named.seen[0]["headers"]["Authorization"] == f"Bearer {secret}"
    basic = base64.b64encode(f"user:{secret}".encode()).decode()
    assert {s["headers"]["Authorization"] for s in userinfo.seen} == {f"Basic {basic}"}
    assert all(s["path"] == f"/v1/chat/completions?api-key={secret}&api-version=2024" and "Authorization" not in s["headers"]
               for s in query.seen)
    # And it appears nowhere else.
    assert any("HTTP 401" in t for t in shown) and any("HTTP 400" in t for t in shown) and any("no endpoint reachable" in t for t in shown)
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records)  # the logs did record the URLs
    for text in shown + [r.getMessage() for r in caplog.records] + [caplog.text]:
        assert secret not in text, text
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    assert 11 <= len(cache) <= 13  # the calls that succeeded were cached (the 401 role may have finished two)


def test_the_identity_is_the_same_with_or_without_credentials(monkeypatch):
    monkeypatch.setenv("ROLE_KEY", "sk-role-123456")
    bare = build_backend(ModelConfig(spec="openai:m@http://127.0.0.1:8000/v1"))
    for spec in ("openai:m@http://u:tok-123456@127.0.0.1:8000/v1", "openai:m@http://127.0.0.1:8000/v1?api-key=tok-123456"):
        assert build_backend(ModelConfig(spec=spec, api_key_env="ROLE_KEY")).identity == bare.identity
    assert ModelConfig(spec="openai:m@http://u:tok-123456@127.0.0.1:8000/v1").model_dump()["spec"] == \
        "openai:m@http://127.0.0.1:8000/v1"
    # the hand-over to a step's process keeps what the requests need
    kept = ModelConfig(spec="openai:m@http://u:tok-123456@h/v1").model_dump(mode="json", context={"credentials": True})
    assert kept["spec"] == "openai:m@http://u:tok-123456@h/v1"


def test_a_recipe_dumps_and_shows_no_url_credential_but_hands_it_to_a_step(tmp_path):
    from bezoar.config import Recipe

    secret = f"bz-secret-{uuid.uuid4().hex}"
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"models:\n  teacher: openai:t@http://user:{secret}@127.0.0.1:8000/v1\n"
                           f"steps:\n  - type: eval\n    mt_bench:\n      judge: anthropic:j@http://127.0.0.1:8001?key={secret}\n")
    recipe = load_recipe(recipe_path)
    spec = recipe.models.teacher.spec
    for text in (recipe.model_dump_json(), repr(recipe.model_dump()), repr(recipe), str(recipe.models.teacher),
                 repr(parse_spec(spec)), repr(build_backend(recipe.models.teacher).endpoints)):
        assert secret not in text and "127.0.0.1:800" in text, text
    handed = recipe.model_dump(mode="json", context={"credentials": True})  # what a step's process gets
    again = Recipe.model_validate(handed)
    assert again.models.teacher.spec == spec and secret in again.step("eval").mt_bench.judge.spec
