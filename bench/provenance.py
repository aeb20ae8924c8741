"""Provenance benchmark: the watermark's detection and false alarms, and finding the sample a passage came from.

Self-contained: creates a PostgreSQL database (dropped at the end), migrates it and seeds the demo
organisations, agreements and checkpoints into a temporary folder. Parts (`--part`, default all):

- index: loads N stored samples (default 1,000,000) under a handful of real succeeded jobs:
  ~100-word texts of words drawn Zipf-like from a vocabulary taken from Python's own documentation
  (pydoc_data.topics), COPYed in as real `Sample` rows, with their fingerprints computed by
  inference.shingles.fingerprints_many and COPYed too; the fingerprint table's keys are built after
  the load, then it is vacuumed and analysed as autovacuum would. Then it times
  inference.selectors.sample_matches on 500 passages of 45 words (about 60 GPT-2 tokens), each cut
  from a random stored sample with 10% of its words replaced by random words: recall (its sample
  ranked first; found at all), p50/p95/p99 lookup ms (target p99 <= 100 ms, recall >= 99%), false
  matches for 200 unrelated passages (human text from /usr/share/common-licenses, and passages drawn
  from the same vocabulary), storage per sample and the lookup's query plan.

- watermark: on the demo gpt2 trained as `make run` builds it (kept under --cache-dir), 200 samples of
  200 new tokens with the lab's watermark, sampled as partners do (temperature 0.7-1.0 with top_p 0.9
  or top_k 40), scored through the check's own path (decoded text, re-tokenized with `tokenizers`):
  share detected at 50, 100 and 200 tokens and at 100 tokens with 10% and 25% of the words replaced
  by random corpus words; and 200 human passages of the same token lengths (windows spread over the
  bundled corpus) flagged. Targets: >= 99% detected at 100 tokens, <= 0.5% of human flagged.

    .venv/bin/python bench/provenance.py [--part index|watermark] [--samples 1000000] [--queries 500]

Environment (defaults in brackets): BENCH_PG_URL [postgres://postgres:postgres@127.0.0.1:5432],
BENCH_DB_NAME [modelpact_bench_provenance], BENCH_BROKER_URL [redis://127.0.0.1:6379/9; flushed]
(bench/_stack.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
# Run as `python bench/provenance.py`, sys.path[0] is bench/: keep this file from shadowing anything.
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from bench._common import cpu_model, emit, percentile, stdout_to_stderr  # noqa: E402
from bench._stack import Stack  # noqa: E402

TARGET_RECALL = 0.99
TARGET_P99_MS = 100.0
PASSAGE_WORDS = 45  # about 60 GPT-2 tokens of English
REPLACED = 0.10
CHUNK = 100_000  # samples generated, fingerprinted and copied at a time
SAMPLES_PER_JOB = 10_000  # Sample.index is a small integer
LICENSES = Path("/usr/share/common-licenses")


class _Corpus:
    """Stored sample texts as word ids: Zipf-like draws from a vocabulary of real documentation words."""

    def __init__(self, samples: int, seed: int) -> None:
        import pydoc_data.topics

        from inference.shingles import words

        vocabulary = sorted({w for text in pydoc_data.topics.topics.values() for w in words(text)})
        self.rng = np.random.default_rng(seed)
        self.rng.shuffle(vocabulary)
        self.vocabulary = np.array(vocabulary, dtype=object)
        weights = 1.0 / np.arange(1, len(vocabulary) + 1)
        self.p = weights / weights.sum()
        self.lengths = self.rng.integers(80, 121, size=samples)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.ids = self.rng.choice(len(vocabulary), size=int(self.offsets[-1]), p=self.p).astype(np.int16)

    def text(self, i: int) -> str:
        return " ".join(self.vocabulary[self.ids[self.offsets[i] : self.offsets[i + 1]]])

    def texts(self, start: int, stop: int) -> list[str]:
        flat = self.vocabulary[self.ids[self.offsets[start] : self.offsets[stop]]]
        base = self.offsets[start]
        return [" ".join(flat[self.offsets[i] - base : self.offsets[i + 1] - base]) for i in range(start, stop)]

    def random_words(self, n: int) -> list[str]:
        return list(self.vocabulary[self.rng.choice(len(self.vocabulary), size=n, p=self.p)])


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_PGCOPY_TRAILER = struct.pack("!h", -1)
_FINGERPRINT_ROW = np.dtype([("fields", ">i2"), ("len1", ">i4"), ("hash", ">i8"), ("len2", ">i4"), ("sample", ">i8")])


def _fingerprint_copy(sample_ids: np.ndarray, hashes: np.ndarray) -> bytes:
    """Binary COPY data for (hash, sample_id) rows, built by numpy rather than row by row."""
    rows = np.empty(len(hashes), dtype=_FINGERPRINT_ROW)
    rows["fields"], rows["len1"], rows["len2"] = 2, 8, 8
    rows["hash"], rows["sample"] = hashes, sample_ids
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def _load(corpus: _Corpus, samples: int, job_ids: list[int], timings: dict[str, float]) -> int:
    """Load the samples and their fingerprints; returns the id before the first loaded sample."""
    from django.db import connection

    from inference.shingles import fingerprints_many

    table = "inference_samplefingerprint"
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        # Keys are built once after the load: far faster than maintaining them row by row.
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass", [table]
        )
        constraints = cursor.fetchall()
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
            [table, table],
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        cursor.execute("SELECT coalesce(max(id), 0) FROM inference_sample")
        base = cursor.fetchone()[0]  # the demo's own samples come first
    raw = connection.connection  # psycopg connection under Django's
    words: dict[str, int] = {}
    spent = dict.fromkeys(["generate_s", "fingerprint_s", "copy_samples_s", "copy_fingerprints_s"], 0.0)
    fingerprint_rows = 0
    for start in range(0, samples, CHUNK):
        stop = min(samples, start + CHUNK)
        t = time.perf_counter()
        texts = corpus.texts(start, stop)
        lines = []
        for i, text in enumerate(texts, start):
            sha = hashlib.sha256(text.encode()).hexdigest()
            job = job_ids[i // SAMPLES_PER_JOB]
            tokens = int(corpus.lengths[i] * 4 // 3)
            lines.append(f"{base + i + 1}\t{job}\t{i % SAMPLES_PER_JOB}\t{text}\t{tokens}\t{sha}\t\t\n")
        spent["generate_s"] += time.perf_counter() - t
        t = time.perf_counter()
        positions, hashes = fingerprints_many(texts, words)
        spent["fingerprint_s"] += time.perf_counter() - t
        t = time.perf_counter()
        with raw.cursor() as cur:
            columns = 'id, job_id, "index", text, token_count, sha256, watermark_scheme, watermark_key_id'
            with cur.copy(f"COPY inference_sample ({columns}) FROM STDIN") as copy:
                copy.write("".join(lines).encode())
        spent["copy_samples_s"] += time.perf_counter() - t
        t = time.perf_counter()
        with raw.cursor() as cur, cur.copy(f"COPY {table} (hash, sample_id) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_fingerprint_copy(positions + base + start + 1, hashes))
        raw.commit()
        spent["copy_fingerprints_s"] += time.perf_counter() - t
        fingerprint_rows += len(hashes)
        print(f"loaded {stop:,} samples, {fingerprint_rows:,} fingerprints", file=sys.stderr)
    timings.update({k: round(v, 1) for k, v in spent.items()})
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('inference_sample', 'id'), %s)", [base + samples])
        t = time.perf_counter()
        cursor.execute("SET maintenance_work_mem = '2GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 2")
        for name, definition in constraints:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            cursor.execute(definition)
        timings["build_keys_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        cursor.execute(f"VACUUM (ANALYZE) {table}")  # what autovacuum does: sets the visibility map
        cursor.execute("ANALYZE inference_sample")
        timings["vacuum_analyze_s"] = round(time.perf_counter() - t, 1)
    timings["fingerprints_per_sample"] = round(fingerprint_rows / samples, 1)
    return base


def _passage(words: list[str], rng: random.Random, replace: Callable[[int], list[str]]) -> str:
    start = rng.randrange(0, max(1, len(words) - PASSAGE_WORDS + 1))
    cut = words[start : start + PASSAGE_WORDS]
    changed = rng.sample(range(len(cut)), round(REPLACED * len(cut) + 0.5))  # 45 words: 5 replaced
    for i, word in zip(changed, replace(len(changed)), strict=True):
        cut[i] = word if word != cut[i] else word + "x"
    return " ".join(cut)


def part_index(args: argparse.Namespace) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User
    from agreements.models import AccessGrant
    from inference.models import GenerationJob
    from inference.selectors import MATCH_MIN_OVERLAP, MATCH_MIN_SHARED, sample_matches
    from inference.shingles import K, M

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    grant = AccessGrant.objects.select_related("organization", "checkpoint").filter(revoked_at=None).first()
    assert grant is not None, "seed_demo made no grant"
    requester = User.objects.filter(membership__organization=grant.organization).first()
    jobs = [
        GenerationJob.objects.create(
            organization=grant.organization,
            requester=requester,
            checkpoint=grant.checkpoint,
            grant=grant,
            prompt="Write about Python",
            max_new_tokens=160,
            temperature=0.8,
            status=GenerationJob.Status.SUCCEEDED,
        )
        for _ in range((args.samples + SAMPLES_PER_JOB - 1) // SAMPLES_PER_JOB)
    ]
    t = time.perf_counter()
    corpus = _Corpus(args.samples, args.seed)
    timings["draw_words_s"] = round(time.perf_counter() - t, 1)
    base = _load(corpus, args.samples, [job.pk for job in jobs], timings)
    timings["load_total_s"] = round(time.perf_counter() - t0, 1)

    rng = random.Random(args.seed)
    wanted = [rng.randrange(args.samples) for _ in range(args.queries)]
    passages = [_passage(corpus.text(i).split(), rng, corpus.random_words) for i in wanted]
    human_words = [w for path in sorted(LICENSES.glob("*")) if path.is_file() for w in path.read_text().split()]
    unrelated = {
        "human": [" ".join(human_words[s : s + PASSAGE_WORDS])
                  for s in (rng.randrange(len(human_words) - PASSAGE_WORDS) for _ in range(args.unrelated))],
        "same_vocabulary": [" ".join(corpus.random_words(PASSAGE_WORDS)) for _ in range(args.unrelated)],
    }  # fmt: skip
    for text in passages[:20]:  # warm the connection and the caches, as a running server would be
        sample_matches(text=text)

    lookup_ms: list[float] = []
    first = found = 0
    shared: list[int] = []
    for sample_id, text in zip((base + i + 1 for i in wanted), passages, strict=True):
        t = time.perf_counter()
        matches = sample_matches(text=text)
        lookup_ms.append((time.perf_counter() - t) * 1000)
        ids = [m.sample_id for m in matches]
        first += bool(ids) and ids[0] == sample_id
        found += sample_id in ids
        shared += [m.shared for m in matches if m.sample_id == sample_id]
    false_matches = {}
    for kind, texts in unrelated.items():
        false_matches[kind] = sum(bool(sample_matches(text=text)) for text in texts)

    # The plan of the very statement sample_matches runs, as it ran it.
    with CaptureQueriesContext(connection) as captured:
        sample_matches(text=passages[0])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + captured.captured_queries[-1]["sql"])
        plan = cursor.fetchone()[0][0]
        sizes = {}
        for name in ("inference_samplefingerprint", "inference_sample"):
            cursor.execute(
                "SELECT pg_relation_size(%s::regclass), pg_indexes_size(%s::regclass), "
                "pg_total_relation_size(%s::regclass)",
                [name, name, name],
            )
            sizes[name] = cursor.fetchone()

    def node_types(node: dict) -> list[str]:
        return [node["Node Type"]] + [t for child in node.get("Plans", []) for t in node_types(child)]

    table, index, total = sizes["inference_samplefingerprint"]
    recall_at_1 = first / args.queries
    p99 = percentile(lookup_ms, 99)
    return {
        "samples": args.samples,
        "design": {
            "shingle_words": K,
            "keep_one_in": M,
            "match_min_shared": MATCH_MIN_SHARED,
            "match_min_overlap": MATCH_MIN_OVERLAP,
        },
        "fingerprints_per_sample": timings.pop("fingerprints_per_sample"),
        "load": timings,
        "queries": args.queries,
        "passage": {"words": PASSAGE_WORDS, "replaced_words": round(REPLACED * PASSAGE_WORDS + 0.5)},
        "recall_at_1": round(recall_at_1, 4),
        "recall_found": round(found / args.queries, 4),
        "shared_fingerprints_of_true_match": {
            "min": min(shared, default=0),
            "p1": round(percentile(shared, 1), 1),
            "p50": percentile(shared, 50),
        },
        "lookup_ms": {
            "p50": round(percentile(lookup_ms, 50), 2),
            "p95": round(percentile(lookup_ms, 95), 2),
            "p99": round(p99, 2),
            "max": round(max(lookup_ms), 2),
        },
        "false_matches": {kind: f"{n}/{args.unrelated}" for kind, n in false_matches.items()},
        "storage_bytes_per_sample": {
            "fingerprints_total": round(total / args.samples),
            "fingerprints_table": round(table / args.samples),
            "fingerprints_indexes": round(index / args.samples),
            "sample_rows_total": round(sizes["inference_sample"][2] / args.samples),
        },
        "fingerprints_total_mb": round(total / 2**20),
        "lookup_plan": {
            "nodes": node_types(plan["Plan"]),
            "execution_ms": plan["Execution Time"],
            "shared_buffers_hit": plan["Plan"].get("Shared Hit Blocks"),
            "read": plan["Plan"].get("Shared Read Blocks"),
        },
        "targets": {
            "recall_at_1": TARGET_RECALL,
            "p99_ms": TARGET_P99_MS,
            "met": recall_at_1 >= TARGET_RECALL and p99 <= TARGET_P99_MS,
        },
    }


# --- watermark: detection on generated text, false positives on human text ----------------------

# Partners' sampling settings, in turn: temperature 0.7-1.0 with top_p 0.9 or top_k 40.
PARTNER_SETTINGS = [
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 0.8, "top_k": 40},
    {"temperature": 0.9, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 40},
]
LENGTHS = (50, 100, 200)
EDIT_RATES = (0.10, 0.25)


def _trained_demo_checkpoint(root: Path) -> tuple[Path, dict]:
    """The demo gpt2 exactly as `make run` builds it (trained on the English corpus), built once under root."""
    from models_registry.services import DEMO_SEEDS, DEMO_TRAIN_STEPS
    from models_registry.training import corpus_split
    from models_registry.weights import DEMO_SHAPES, build_demo_checkpoint

    folder = root / "gpt2"
    steps = DEMO_TRAIN_STEPS["gpt2"]
    report = folder / "training.json"
    if not report.is_file() or json.loads(report.read_text()).get("steps") != steps:
        shape = DEMO_SHAPES["gpt2"]
        build_demo_checkpoint(
            folder,
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            seed=DEMO_SEEDS["gpt2"],
            corpus=corpus_split().train_text,
            train_steps=steps,
        )
    return folder, json.loads(report.read_text())


def _rates(verdicts: list[str]) -> dict:
    n = len(verdicts)
    return {
        "n": n,
        "watermarked": round(verdicts.count("watermarked") / n, 4) if n else None,
        "too_short": verdicts.count("too short to tell"),
    }


def part_watermark(args: argparse.Namespace) -> dict:
    """Generate partner-like samples with the watermark; score them, edited copies and human passages."""
    import random

    from inference import engine
    from inference.tokens import token_ids
    from inference.watermark import WatermarkKey, score, verdict
    from models_registry.training import corpus_text, held_out_passages

    started = time.perf_counter()
    folder, training = _trained_demo_checkpoint(Path(args.cache_dir))
    key = WatermarkKey.from_secret("benchmark watermark key, not a lab secret")
    passages = held_out_passages()
    rng = random.Random(7)
    # Prompts: eight words from a held-out passage, from the next ten words on once every passage served.
    prompts = []
    for n in range(args.samples_watermark):
        words = passages[n % len(passages)].split()
        start = 10 * (n // len(passages)) % max(1, len(words) - 8)
        prompts.append(" ".join(words[start : start + 8]))
    requests = [
        engine.GenerationRequest(
            n, prompt, engine.SamplingParams(max_new_tokens=max(LENGTHS), seed=n, **PARTNER_SETTINGS[n % 4])
        )
        for n, prompt in enumerate(prompts)
    ]
    cache = engine.ModelCache()
    results = engine.generate(folder, requests, device="cpu", cache=cache, max_rows=64, watermark=key)
    generation_s = time.perf_counter() - started
    samples = [r.samples[0] for r in results]
    vocabulary = sorted({w for p in passages for w in p.split() if w.isalpha()})

    def judge(text: str) -> tuple[str, float]:
        found = verdict([score(token_ids(folder, text), key)])
        return found.outcome, found.best.z_score

    def decoded(ids: tuple[int, ...]) -> str:
        return cache.get(folder, "cpu").tokenizer.decode(list(ids), skip_special_tokens=True)

    def edited(text: str, rate: float) -> str:
        words = text.split(" ")
        for i in rng.sample(range(len(words)), round(rate * len(words))):
            words[i] = rng.choice(vocabulary)
        return " ".join(words)

    generated: dict[str, dict] = {}
    human: dict[str, dict] = {}
    tokenizer = cache.get(folder, "cpu").tokenizer
    human_ids = token_ids(folder, corpus_text())
    for length in LENGTHS:
        # Samples that ended (end of text) before `length` tokens are left out of that length's count.
        texts = [decoded(s.token_ids[:length]) for s in samples if s.token_count >= length]
        judged = [judge(t) for t in texts]
        generated[str(length)] = {
            **_rates([v for v, _ in judged]),
            "median_z": round(statistics.median(z for _, z in judged), 2) if judged else None,
        }
        if length == 100:
            for rate in EDIT_RATES:
                edits = [judge(edited(t, rate)) for t in texts]
                generated[f"100, {round(rate * 100)}% of words replaced"] = {
                    **_rates([v for v, _ in edits]),
                    "median_z": round(statistics.median(z for _, z in edits), 2) if edits else None,
                }
        # Human text of the same token length: windows spread evenly over the bundled corpus.
        windows = list(range(0, len(human_ids) - length + 1, length))
        picked = windows[:: max(1, len(windows) // args.samples_watermark)][: args.samples_watermark]
        cuts = [tokenizer.decode(human_ids[i : i + length]) for i in picked]
        flagged = [judge(text)[0] for text in cuts]
        human[str(length)] = {
            "n": len(cuts),
            "flagged": flagged.count("watermarked"),
            "false_positive_rate": round(flagged.count("watermarked") / len(cuts), 4) if cuts else None,
        }
    detected_100 = generated["100"]["watermarked"] or 0.0
    fpr_100 = human["100"]["false_positive_rate"] or 0.0
    return {
        "checkpoint": {"folder": str(folder), "training": training},
        "samples": len(samples),
        "sampling": PARTNER_SETTINGS,
        "mean_tokens_per_sample": round(statistics.mean(s.token_count for s in samples), 1),
        "generation_s": round(generation_s, 1),
        "generated": generated,
        "human": human,
        "target": ">= 99% of 100-token samples detected; <= 0.5% of 100-token human passages flagged",
        "pass": detected_100 >= 0.99 and fpr_100 <= 0.005,
    }


PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"index": part_index, "watermark": part_watermark}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--samples", type=int, default=1_000_000, help="stored samples to load")
    parser.add_argument("--queries", type=int, default=500, help="passages cut from stored samples")
    parser.add_argument("--unrelated", type=int, default=200, help="unrelated passages of each kind")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--keep", action="store_true", help="keep the database (debugging)")
    parser.add_argument("--watermark-samples", dest="samples_watermark", type=int, default=200)
    parser.add_argument(
        "--cache-dir",
        default=str(_ROOT / "var" / "bench" / "provenance"),
        help="where the trained demo gpt2 is built once and kept (about 40 s to build)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    stack = Stack(db_name=os.environ.get("BENCH_DB_NAME", "modelpact_bench_provenance"), prefix="mp-bench-provenance-")
    # The index needs rows, not trained weights; the watermark part builds its own trained gpt2.
    os.environ["DEMO_CHECKPOINT_TRAINING"] = "false"
    out: dict = {"benchmark": "provenance"}
    try:
        with stdout_to_stderr():
            stack.setup()
            out["setup"] = stack.timings
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("SHOW server_version")
                out["postgres"] = cursor.fetchone()[0]
            for name, run in PARTS.items():
                if args.part in (name, "all"):
                    out[name] = run(args)
    finally:
        with stdout_to_stderr():
            stack.teardown(keep=args.keep)
    out["machine"] = {
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "loadavg_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    out["wall_s"] = round(time.perf_counter() - started, 1)
    emit(out)


if __name__ == "__main__":
    main()
