"""Training-data augmentation: SICK pairs for STS, and EDA (Wei & Zou 2019) for any task.

Two sources of extra training rows, both written next to the original rows with a ``source``
column (``"orig"``, ``"sick"``, ``"eda:<op>"``) so that every row can be traced:

- SICK (Marelli et al. 2014) for ``sts``. SICK shares pairs with STS-B; every SICK pair that the
  overlap file flags as occurring in the course's STS train, dev or test split is dropped, and so
  is every pair whose normalized sentences match a pair of the prepared STS tables (defence in
  depth: the check does not trust the flags file alone). SICK relatedness 1..5 is mapped onto the
  STS scale 0..5 by `sick_to_sts`.
- EDA: synonym replacement (WordNet), random insertion of a synonym, random swap and random
  deletion. Each augmented copy applies one operation; the copy keeps its row's label. Only
  original rows are augmented (not SICK rows, not earlier copies).

Randomness comes from one `random.Random` per task seeded from ``(seed, task)``: the same seed
gives byte-identical output.

Sentence overlap policy: the overlap file also flags SICK pairs that merely share one sentence
with an STS split (``sentence_in_*``). These are kept by default: STS-B itself shares a sentence
with its train split in about 22% of its dev pairs (194 of 863) and 21% of its test pairs, so one
shared sentence is no more leakage than the benchmark's own train split already carries, while
dropping them would remove 2,540 more SICK pairs. The label of an evaluation *pair* is what must
not leak, and every such pair is dropped. ``select_sick(..., drop_sentence_overlap=True)`` gives
the strict policy.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mtbert.config import AugmentConfig
from mtbert.data import DataFormatError, read_prepared, write_prepared
from mtbert.tasks import TASK_SPECS, TASKS
from mtbert.wordnet import WordNet, load_wordnet

SICK_FILE = "extra/SICK.txt"
SICK_OVERLAP_FILE = "extra/SICK_overlap_with_cs224n_sts.tsv"
STS_SPLITS: tuple[str, ...] = ("train", "dev", "test")
SICK_LOW, SICK_HIGH = 1.0, 5.0
STS_LOW, STS_HIGH = 0.0, 5.0
EDA_OPS: tuple[str, ...] = ("synonym", "insert", "swap", "delete")
SOURCE_ORIG, SOURCE_SICK = "orig", "sick"
# English function words (the NLTK list that EDA uses, trimmed): never replaced or used as the
# source of an inserted synonym, so augmentation changes content words only.
STOP_WORDS: frozenset[str] = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves what which who whom this that
these those am is are was were be been being have has had having do does did doing a an the and
but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here
there when where why how all any both each few more most other some such no nor not only own same
so than too very s t can will just don should now
""".split())

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SICK_COLUMNS = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score")
_PAIR_FLAGS = tuple(f"pair_in_sts-{split}" for split in STS_SPLITS)
_SENTENCE_FLAGS = tuple(f"sentence_in_sts-{split}" for split in STS_SPLITS)

Rows = list[tuple[int, dict[str, str]]]


# ---------------------------------------------------------------------------------------------
# SICK: reading, mapping, overlap removal.


def sick_to_sts(relatedness: float) -> float:
    """Map a SICK relatedness score (1..5) linearly onto the STS similarity scale (0..5).

    ``(r - 1) * 5 / 4``: both scales are "how similar", 1 and 5 are SICK's ends and 0 and 5
    are STS's, so the ends map onto the ends (1 -> 0, 3 -> 2.5, 5 -> 5).

    Raises:
        ValueError: `relatedness` is outside 1..5.
    """
    if not SICK_LOW <= relatedness <= SICK_HIGH:
        raise ValueError(f"SICK relatedness {relatedness} is outside {SICK_LOW:g}..{SICK_HIGH:g}")
    return (relatedness - SICK_LOW) * (STS_HIGH - STS_LOW) / (SICK_HIGH - SICK_LOW) + STS_LOW


def _read_tsv(path: Path, required: Sequence[str]) -> Rows:
    """(line number, column -> value) for every data line of a plain tab-separated file.

    No quote handling: SICK's text columns contain unbalanced double quotes. CRLF is accepted.

    Raises:
        DataFormatError: missing file content, a missing or repeated header column, a line with
            the wrong number of fields, or invalid UTF-8.
    """
    try:
        lines = path.read_bytes().decode("utf-8").removeprefix("\ufeff").split("\n")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, 0, "row", f"invalid UTF-8 at byte {err.start}") from None
    lines = [line.removesuffix("\r") for line in lines]
    if lines and lines[-1] == "":
        lines.pop()
    header = [name.strip() for name in lines[0].split("\t")] if lines else []
    for column in required:
        if header.count(column) != 1:
            problem = "missing required column" if column not in header else "repeated column"
            raise DataFormatError(path, 1, column, f"{problem} in header of {path.name}")
    rows: Rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            reason = f"expected {len(header)} tab-separated fields, found {len(fields)}"
            raise DataFormatError(path, number, "row", reason)
        rows.append((number, dict(zip(header, fields))))
    return rows


def _unique_id(path: Path, number: int, row: dict[str, str], seen: dict[str, int]) -> str:
    pair_id = row["pair_ID"].strip()
    if not pair_id:
        raise DataFormatError(path, number, "pair_ID", "empty pair_ID")
    if pair_id in seen:
        raise DataFormatError(path, number, "pair_ID",
                              f"duplicate pair_ID {pair_id!r} (first on line {seen[pair_id]})")
    seen[pair_id] = number
    return pair_id


def _relatedness(path: Path, number: int, text: str) -> float:
    value = text.strip()
    if not _NUMBER.fullmatch(value):
        raise DataFormatError(path, number, "relatedness_score", f"non-numeric score {value!r}")
    score = float(value)
    if not SICK_LOW <= score <= SICK_HIGH:
        raise DataFormatError(path, number, "relatedness_score",
                              f"score {value} out of range {SICK_LOW:g}..{SICK_HIGH:g}")
    return score


def read_sick(path: str | Path) -> pd.DataFrame:
    """Read SICK.txt and check every row.

    Returns:
        Columns ``pair_id`` (str), ``sentence1``, ``sentence2`` (stripped str),
        ``relatedness`` (float64, 1..5) and ``line`` (the 1-based physical line).

    Raises:
        DataFormatError: the first bad header or row, naming file, line and field (policy:
            fail; the file is small and curated, so a bad row means a wrong file).
    """
    path = Path(path)
    records, seen = [], {}
    for number, row in _read_tsv(path, _SICK_COLUMNS):
        pair_id = _unique_id(path, number, row, seen)
        sentences = []
        for column in ("sentence_A", "sentence_B"):
            sentence = row[column].strip()
            if not sentence:
                raise DataFormatError(path, number, column, "empty or whitespace-only sentence")
            sentences.append(sentence)
        records.append((pair_id, *sentences, _relatedness(path, number, row["relatedness_score"]),
                        number))
    columns = ["pair_id", "sentence1", "sentence2", "relatedness", "line"]
    return pd.DataFrame.from_records(records, columns=columns).astype({"relatedness": "float64"})


def read_sick_overlap(path: str | Path) -> pd.DataFrame:
    """Read the SICK/STS overlap flags: ``pair_id`` plus one bool column per flag.

    Raises:
        DataFormatError: a missing flag column, a flag other than 0/1, or a bad pair_ID.
    """
    path = Path(path)
    records, seen = [], {}
    flags = _PAIR_FLAGS + _SENTENCE_FLAGS
    for number, row in _read_tsv(path, ("pair_ID", *flags)):
        values = [_unique_id(path, number, row, seen)]
        for column in flags:
            if row[column].strip() not in ("0", "1"):
                raise DataFormatError(path, number, column, f"flag {row[column]!r} is not 0 or 1")
            values.append(row[column].strip() == "1")
        records.append(tuple(values))
    return pd.DataFrame.from_records(records, columns=["pair_id", *flags])


def normalize_sentence(text: str) -> str:
    """Lower-case, every run of non-alphanumerics -> one space, stripped ("A man's" -> "a man s").

    This reproduces the overlap file's flags exactly on the course data.
    """
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def _pair_keys(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """Normalized (sentence1, sentence2) of every row, in both orders."""
    firsts = frame["sentence1"].map(normalize_sentence)
    pairs = zip(firsts, frame["sentence2"].map(normalize_sentence))
    return {key for a, b in pairs for key in ((a, b), (b, a))}


def check_flags_cover(sick: pd.DataFrame, overlap: pd.DataFrame, sick_path: Path,
                      overlap_path: Path) -> None:
    """Raise DataFormatError at the first SICK pair that has no row in the overlap file."""
    missing = ~sick["pair_id"].isin(overlap["pair_id"])
    if missing.any():
        first = sick[missing].iloc[0]
        raise DataFormatError(sick_path, int(first["line"]), "pair_ID",
                              f"pair {first['pair_id']!r} has no row in {overlap_path}")


def _flags_for(sick: pd.DataFrame, overlap: pd.DataFrame) -> pd.DataFrame:
    """The overlap flags aligned to `sick`'s rows (a pair without flags is an error)."""
    flags = sick[["pair_id"]].merge(overlap, on="pair_id", how="left", validate="1:1")
    if flags[list(_PAIR_FLAGS)].isna().any().any():
        raise ValueError("some SICK pairs have no overlap flags; see check_flags_cover")
    return flags


def select_sick(
    sick: pd.DataFrame,
    overlap: pd.DataFrame,
    sts_frames: dict[str, pd.DataFrame],
    drop_sentence_overlap: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Drop SICK pairs that overlap STS; see the module docstring for the policy.

    Args:
        sick: from `read_sick`.
        overlap: from `read_sick_overlap`.
        sts_frames: split -> prepared STS table (``sentence1``, ``sentence2``).
        drop_sentence_overlap: also drop pairs flagged ``sentence_in_*`` (strict policy).

    Returns:
        The kept SICK rows, and a report of counts (flags per split, drops by reason, kept).
    """
    flags = _flags_for(sick, overlap)
    by_pair_flag = flags[list(_PAIR_FLAGS)].any(axis=1).to_numpy()
    by_sentence_flag = flags[list(_SENTENCE_FLAGS)].any(axis=1).to_numpy()
    sts_keys = set().union(*(_pair_keys(frame) for frame in sts_frames.values()))
    by_text = _pair_keys_match(sick, sts_keys)
    drop = by_pair_flag | by_text | (by_sentence_flag if drop_sentence_overlap else False)
    report = {
        "rows_read": len(sick),
        "policy": "pair+sentence" if drop_sentence_overlap else "pair",
        "pair_flags": {col: int(flags[col].sum()) for col in _PAIR_FLAGS},
        "sentence_flags": {col: int(flags[col].sum()) for col in _SENTENCE_FLAGS},
        "sts_tables_checked": sorted(sts_frames),
        "dropped_pair_flag": int(by_pair_flag.sum()),
        "dropped_text_match": int(by_text.sum()),
        "dropped_text_match_not_flagged": int((by_text & ~by_pair_flag).sum()),
        "sentence_flag_only": int((by_sentence_flag & ~by_pair_flag & ~by_text).sum()),
        "dropped": int(drop.sum()),
        "used": int((~drop).sum()),
    }
    return sick[~drop].reset_index(drop=True), report


def _pair_keys_match(sick: pd.DataFrame, keys: set[tuple[str, str]]) -> Any:
    """Boolean array: whether each SICK pair's normalized (A, B) is in `keys`."""
    a = sick["sentence1"].map(normalize_sentence)
    b = sick["sentence2"].map(normalize_sentence)
    return pd.Series([(x, y) in keys for x, y in zip(a, b)], dtype=bool).to_numpy()


def sick_rows(sick: pd.DataFrame) -> pd.DataFrame:
    """Kept SICK pairs as STS training rows: ids ``sick-<pair_ID>``, labels via `sick_to_sts`."""
    return pd.DataFrame({
        "id": "sick-" + sick["pair_id"].astype(str),
        "sentence1": sick["sentence1"].astype(str),
        "sentence2": sick["sentence2"].astype(str),
        "label": sick["relatedness"].map(sick_to_sts).astype("float64"),
        "source": SOURCE_SICK,
    })


def load_sick(raw_dir: Path, sts_frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """Read SICK and its overlap flags from `raw_dir`, drop overlaps, return STS rows + report.

    Raises:
        FileNotFoundError: a SICK file is missing (they are optional in the raw data import).
    """
    paths = [raw_dir / SICK_FILE, raw_dir / SICK_OVERLAP_FILE]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: augment.sick needs {SICK_FILE} and {SICK_OVERLAP_FILE} "
                "in the raw data directory (or set augment.sick: false)")
    sick, overlap = read_sick(paths[0]), read_sick_overlap(paths[1])
    check_flags_cover(sick, overlap, *paths)
    kept, report = select_sick(sick, overlap, sts_frames)
    return sick_rows(kept), report


# ---------------------------------------------------------------------------------------------
# EDA operations on token lists. Tokens are whitespace-split; a replaced or inserted synonym
# may hold spaces ("motion picture") and is one list item until the sentence is joined.


def is_candidate(token: str) -> bool:
    """Whether a token may be replaced or give a synonym to insert (a non-stop-word word)."""
    return token.isalpha() and token.lower() not in STOP_WORDS


def clean_synonyms(wordnet: WordNet, token: str) -> list[str]:
    """WordNet synonyms of `token` usable in a sentence: hyphens to spaces, letters only."""
    out = []
    for synonym in wordnet.synonyms(token):
        synonym = synonym.replace("-", " ")
        if synonym.replace(" ", "").isalpha() and synonym != token.lower():
            out.append(synonym)
    return out


def _match_case(source: str, synonym: str) -> str:
    return synonym[:1].upper() + synonym[1:] if source[:1].isupper() else synonym


def synonym_replacement(
    tokens: list[str], n: int, rng: random.Random, wordnet: WordNet
) -> list[str]:
    """Replace up to `n` distinct candidate words (every occurrence) by a random synonym."""
    words = sorted({t for t in tokens if is_candidate(t)})
    rng.shuffle(words)
    out, replaced = list(tokens), 0
    for word in words:
        synonyms = clean_synonyms(wordnet, word)
        if not synonyms:
            continue
        synonym = _match_case(word, rng.choice(synonyms))
        out = [synonym if t == word else t for t in out]
        replaced += 1
        if replaced >= n:
            break
    return out


def random_insertion(
    tokens: list[str], n: int, rng: random.Random, wordnet: WordNet
) -> list[str]:
    """`n` times: insert a synonym of a random candidate word at a random position."""
    out = list(tokens)
    sources = [t for t in tokens if is_candidate(t) and clean_synonyms(wordnet, t)]
    if not sources:
        return out
    for _ in range(n):
        synonym = rng.choice(clean_synonyms(wordnet, rng.choice(sources)))
        out.insert(rng.randint(0, len(out)), synonym)
    return out


def random_swap(tokens: list[str], n: int, rng: random.Random) -> list[str]:
    """`n` times: swap the tokens at two different random positions."""
    out = list(tokens)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(tokens: list[str], p: float, rng: random.Random) -> list[str]:
    """Delete each token with probability `p`; never returns an empty list (keeps one token)."""
    if len(tokens) < 2:
        return list(tokens)
    out = [t for t in tokens if rng.random() >= p]
    return out or [rng.choice(tokens)]


def apply_op(
    op: str, sentence: str, cfg: AugmentConfig, rng: random.Random, wordnet: WordNet
) -> str:
    """One EDA operation on one sentence, with the number of changes set by the op's rate.

    Raises:
        ValueError: unknown op.
    """
    tokens = sentence.split()
    count = max(1, int(len(tokens) * _rate(cfg, op)))  # Wei & Zou: n = max(1, alpha * length)
    ops: dict[str, Callable[[], list[str]]] = {
        "synonym": lambda: synonym_replacement(tokens, count, rng, wordnet),
        "insert": lambda: random_insertion(tokens, count, rng, wordnet),
        "swap": lambda: random_swap(tokens, count, rng),
        "delete": lambda: random_deletion(tokens, cfg.delete_rate, rng),
    }
    if op not in ops:
        raise ValueError(f"unknown EDA op {op!r}; valid ops: {', '.join(EDA_OPS)}")
    return " ".join(ops[op]())


def _rate(cfg: AugmentConfig, op: str) -> float:
    return {"synonym": cfg.synonym_rate, "insert": cfg.insert_rate,
            "swap": cfg.swap_rate, "delete": cfg.delete_rate}[op]


def enabled_ops(cfg: AugmentConfig) -> tuple[str, ...]:
    """The EDA ops whose rate is above 0, in `EDA_OPS` order."""
    return tuple(op for op in EDA_OPS if _rate(cfg, op) > 0)


# ---------------------------------------------------------------------------------------------
# EDA over a table.


def _augment_row(
    sentences: tuple[str, ...], cfg: AugmentConfig, rng: random.Random, wordnet: WordNet
) -> list[tuple[str, tuple[str, ...]]]:
    """Up to `cfg.eda_copies` (op, new sentences) for one row, each new and different.

    The ops are shuffled per row and used in turn, so copies spread over the ops as in Wei & Zou;
    an op that changes nothing (no synonym found, one-word sentence) yields to the next op.
    A copy is skipped when no op gives a version unlike the original and the earlier copies.
    """
    ops = list(enabled_ops(cfg))
    rng.shuffle(ops)
    seen, copies = {sentences}, []
    for copy in range(cfg.eda_copies):
        for shift in range(len(ops)):
            op = ops[(copy + shift) % len(ops)]
            new = tuple(apply_op(op, s, cfg, rng, wordnet) for s in sentences)
            if new not in seen:
                seen.add(new)
                copies.append((op, new))
                break
    return copies


def augment_frame(
    frame: pd.DataFrame, cfg: AugmentConfig, rng: random.Random, wordnet: WordNet
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """EDA copies of every row of a prepared table (pair tasks: both sentences, same op).

    Returns:
        The new rows only (ids ``<id>-eda<k>``, the row's label, source ``eda:<op>``), and a
        report with per-op counts and the number of copies that could not be made.
    """
    if not enabled_ops(cfg):
        raise ValueError("augment.eda_tasks is set but all EDA rates are 0; set a rate > 0 or "
                         "augment.eda_tasks: []")
    columns = [c for c in ("sentence1", "sentence2") if c in frame.columns]
    records, per_op = [], Counter()
    for row in frame.itertuples(index=False):
        sentences = tuple(getattr(row, c) for c in columns)
        for k, (op, new) in enumerate(_augment_row(sentences, cfg, rng, wordnet), start=1):
            records.append((f"{row.id}-eda{k}", *new, row.label, f"eda:{op}"))
            per_op[op] += 1
    out = pd.DataFrame.from_records(records, columns=["id", *columns, "label", "source"])
    out["label"] = out["label"].astype(frame["label"].dtype)
    report = {"per_op": {op: per_op[op] for op in EDA_OPS}, "copies": len(out),
              "copies_not_made": len(frame) * cfg.eda_copies - len(out)}
    return out, report


# ---------------------------------------------------------------------------------------------
# Entry point.


def _read_sts_tables(prepared_dir: Path) -> dict[str, pd.DataFrame]:
    """Prepared STS tables of every split present (train and dev required)."""
    frames = {}
    for split in STS_SPLITS:
        path = prepared_dir / f"sts-{split}.parquet"
        if path.is_file():
            frames[split] = read_prepared(path)
        elif split != "test":
            raise FileNotFoundError(f"{path} not found: run `mtbert prepare` first")
    return frames


def _check_unique_ids(frame: pd.DataFrame, task: str) -> None:
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{task}: augmented table has duplicate ids, e.g. {duplicated.iloc[0]!r}")


def _augment_task(task: str, frame: pd.DataFrame, extra: list[pd.DataFrame]) -> pd.DataFrame:
    columns = ["id", "sentence1", *(["sentence2"] if TASK_SPECS[task].is_pair else []), "label"]
    out = pd.concat([frame[columns].assign(source=SOURCE_ORIG), *extra], ignore_index=True)
    out["source"] = out["source"].astype(str)
    _check_unique_ids(out, task)
    return out


def build_augmented(
    prepared_dir: Path, raw_dir: Path, out_dir: Path, cfg: AugmentConfig, seed: int
) -> dict[str, Any]:
    """Write ``out_dir/<task>-train.parquet`` for every task: original rows plus augmentation.

    Args:
        prepared_dir: holds ``<task>-train.parquet`` (and ``sts-dev``/``sts-test`` tables,
            used to find SICK pairs that overlap STS).
        raw_dir: the imported raw data, holding the SICK files under ``extra/``.
        out_dir: where the augmented training tables go (columns of the prepared table plus
            ``source``; tasks without augmentation are copied with source ``orig``).
        cfg: the ``augment`` section of the config.
        seed: seeds one `random.Random` per task; same seed, same output.

    Returns:
        A JSON-able report: per task rows before/after and rows per source, the SICK selection
        counts, and EDA per-op counts.

    Raises:
        FileNotFoundError: a prepared table, a SICK file (when ``cfg.sick``) or WordNet (when
            EDA is on) is missing.
    """
    prepared_dir, raw_dir, out_dir = Path(prepared_dir), Path(raw_dir), Path(out_dir)
    eda_on = cfg.eda_copies > 0 and bool(cfg.eda_tasks)
    wordnet = load_wordnet(cfg.wordnet_dir) if eda_on else None
    report: dict[str, Any] = {"seed": seed, "tasks": {}, "eda": {}, "sick": None}
    for task in TASKS:
        frame = read_prepared(prepared_dir / f"{task}-train.parquet")
        extra = []
        if eda_on and task in cfg.eda_tasks:
            rng = random.Random(f"{seed}:{task}")  # str seeds are hashed stably (sha512)
            rows, report["eda"][task] = augment_frame(frame, cfg, rng, wordnet)
            extra.append(rows)
        if task == "sts" and cfg.sick:
            rows, report["sick"] = load_sick(raw_dir, _read_sts_tables(prepared_dir))
            extra.append(rows)
        out = _augment_task(task, frame, extra)
        write_prepared(out, out_dir / f"{task}-train.parquet")
        report["tasks"][task] = _task_report(frame, out)
    return report


def _task_report(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    sources = after["source"].value_counts().sort_index()
    return {"rows_before": len(before), "rows_after": len(after),
            "sources": {str(k): int(v) for k, v in sources.items()}}
