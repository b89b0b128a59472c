"""bitsandbytes must not reach the hub in a bezoar process (with `kernels` installed its import asks
for a CPU kernel); transformers' Trainer imports peft, which imported bitsandbytes before peft 0.22,
and bezoar's QLoRA path imports it directly."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _recording_hub() -> tuple[ThreadingHTTPServer, list[str]]:
    """A stand-in hub on 127.0.0.1 that answers 404 to everything and records what was asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, asked


def _import_in_child(code: str, endpoint: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home / "hf"), KERNELS_CACHE=str(home / "kernels"),
               # a machine with an HTTP proxy would send the stand-in hub's requests to the proxy instead
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def _bitsandbytes_would_ask_the_hub() -> bool:
    """Only an AVX512-BF16 CPU with `kernels` installed makes bitsandbytes 0.50 ask. (Asking
    bitsandbytes itself would import it here, hub call and all.)"""
    if importlib.util.find_spec("kernels") is None or importlib.util.find_spec("bitsandbytes") is None:
        return False
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "avx512_bf16" in cpuinfo.read_text().split()


def test_importing_the_trainer_in_a_bezoar_process_makes_no_hub_request(tmp_path):
    server, asked = _recording_hub()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    try:
        guarded = _import_in_child(
            "import importlib.util\nimport bezoar\n"
            "importlib.util.find_spec(\"bitsandbytes\")  # an availability check first, as student.py does\n"
            "from transformers import TrainerCallback\n"
            "import bitsandbytes  # peft >= 0.22 no longer imports it with itself; student.py does\n",
            endpoint, tmp_path)
        assert guarded.returncode == 0, guarded.stderr[-2000:]
        assert asked == [], f"bezoar's import of bitsandbytes asked the hub: {asked}"
        assert "trust check" not in guarded.stderr
        if _bitsandbytes_would_ask_the_hub():
            # The control: on this CPU a plain import does ask, so the test above can fail.
            plain = _import_in_child("import bitsandbytes\n", endpoint, tmp_path)
            assert plain.returncode == 0, plain.stderr[-2000:]
            assert any("kernels-community" in path for path in asked), asked
    finally:
        server.shutdown()
