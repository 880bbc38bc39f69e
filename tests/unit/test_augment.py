"""Unit tests of mtbert.augment (SICK selection, EDA ops, build_augmented) and mtbert.wordnet.

WordNet comes from the Debian package wordnet-base (/usr/share/wordnet); it is read once per module.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from mtbert.augment import (
    EDA_OPS,
    SICK_FILE,
    SICK_OVERLAP_FILE,
    STOP_WORDS,
    augment_frame,
    build_augmented,
    clean_synonyms,
    random_deletion,
    random_insertion,
    random_swap,
    read_sick,
    read_sick_overlap,
    select_sick,
    sick_to_sts,
    synonym_replacement,
)
from mtbert.config import AugmentConfig
from mtbert.data import DataFormatError, read_prepared, write_prepared
from mtbert.wordnet import WordNet, WordNetMissingError, load_wordnet

WORDNET_DIR = Path("/usr/share/wordnet")
SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set"
FLAGS_HEADER = ("pair_ID\tpair_in_sts-train\tsentence_in_sts-train\tpair_in_sts-dev\t"
                "sentence_in_sts-dev\tpair_in_sts-test\tsentence_in_sts-test")
SENTENCE = "The movie is a good and funny film but the ending was bad".split()


@pytest.fixture(scope="module")
def wordnet() -> WordNet:
    if not (WORDNET_DIR / "index.noun").is_file():
        pytest.fail(f"WordNet not in {WORDNET_DIR}: apt-get install -y wordnet-base")
    return load_wordnet(WORDNET_DIR)


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------
# WordNet reader


def test_wordnet_synonyms_of_good(wordnet: WordNet) -> None:
    synonyms = wordnet.synonyms("good")
    assert {"well", "beneficial", "goodness"} <= set(synonyms)
    assert "good" not in synonyms
    assert wordnet.synonyms("Good") == synonyms  # case-insensitive look-up


def test_wordnet_base_forms_and_unknown_words(wordnet: WordNet) -> None:
    assert "film" in wordnet.synonyms("movies")  # morphy: movies -> movie
    assert "mouse" in wordnet.base_forms("mice", "n")  # exception list
    assert "movie" not in wordnet.synonyms("movies")  # the word's own base form is not a synonym
    assert wordnet.synonyms("xyzzyq") == ()
    assert wordnet.synonyms("the") == ()


def test_wordnet_missing_directory_names_dir_and_package(tmp_path: Path) -> None:
    with pytest.raises(WordNetMissingError, match="wordnet-base") as err:
        load_wordnet(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


# ---------------------------------------------------------------------------------------------
# SICK


@pytest.mark.parametrize(("relatedness", "expected"), [(1, 0.0), (5, 5.0), (3, 2.5), (4.6, 4.5)])
def test_sick_to_sts_maps_linearly(relatedness: float, expected: float) -> None:
    assert sick_to_sts(relatedness) == pytest.approx(expected)


@pytest.mark.parametrize("relatedness", [0.99, 5.01, 0])
def test_sick_to_sts_rejects_out_of_range(relatedness: float) -> None:
    with pytest.raises(ValueError, match="outside 1..5"):
        sick_to_sts(relatedness)


def test_read_sick_parses_crlf_and_unbalanced_quotes(tmp_path: Path) -> None:
    path = _write(tmp_path / "SICK.txt", [SICK_HEADER, 'a\tA "man\tA dog\tNEUTRAL\t3.2\tTRAIN',
                                          "b\t Two cats \tKids\tENTAILMENT\t5\tTEST"], "\r\n")
    sick = read_sick(path)
    assert sick["pair_id"].tolist() == ["a", "b"]
    assert sick["sentence1"].tolist() == ['A "man', "Two cats"]
    assert sick["relatedness"].tolist() == [3.2, 5.0]
    assert sick["line"].tolist() == [2, 3]


@pytest.mark.parametrize(("row", "field", "reason"), [
    ("7\tA man\tA dog\tNEUTRAL\t5.5\tTRAIN", "relatedness_score", "out of range"),
    ("7\tA man\tA dog\tNEUTRAL\thigh\tTRAIN", "relatedness_score", "non-numeric"),
    ("7\tA man\t  \tNEUTRAL\t3\tTRAIN", "sentence_B", "empty"),
    ("1\tA man\tA dog\tNEUTRAL\t3\tTRAIN", "pair_ID", "duplicate pair_ID '1' (first on line 2)"),
    ("7\tA man\tA dog\t3\tTRAIN", "row", "expected 6 tab-separated fields, found 5"),
])
def test_read_sick_errors_name_file_line_field(tmp_path: Path, row: str, field: str,
                                               reason: str) -> None:
    path = _write(tmp_path / "SICK.txt", [SICK_HEADER, "1\tA cat\tA cat\tNEUTRAL\t4\tTRAIN", row])
    with pytest.raises(DataFormatError) as err:
        read_sick(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, field)
    assert reason in err.value.reason


def test_read_sick_missing_column_and_bad_flag(tmp_path: Path) -> None:
    path = _write(tmp_path / "SICK.txt", ["pair_ID\tsentence_A\tsentence_B", "1\ta\tb"])
    with pytest.raises(DataFormatError, match="relatedness_score.*missing required column"):
        read_sick(path)
    flags = _write(tmp_path / "flags.tsv", [FLAGS_HEADER, "1\t0\t0\t2\t0\t0\t0"])
    with pytest.raises(DataFormatError) as err:
        read_sick_overlap(flags)
    assert (err.value.line, err.value.field) == (2, "pair_in_sts-dev")


def _sick_frames(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """Five SICK pairs: flagged, text-only match (reversed, other case), sentence flag, 2 clean."""
    sick = read_sick(_write(tmp_path / "SICK.txt", [
        SICK_HEADER,
        "1\tA man plays\tA man sings\tN\t2\tTRAIN",
        "2\tA dog runs.\tThe dog is running\tN\t4\tTRAIN",
        "3\tA cat sleeps\tA kid eats\tN\t1\tTRAIN",
        "4\tA boy swims\tA girl swims\tN\t3\tTRAIN",
        "5\tA kid jumps\tA kid hops\tN\t5\tTRAIN",
    ]))
    flags = read_sick_overlap(_write(tmp_path / "flags.tsv", [
        FLAGS_HEADER, "1\t0\t0\t1\t1\t0\t0", "2\t0\t0\t0\t0\t0\t0", "3\t0\t0\t0\t0\t0\t1",
        "4\t0\t0\t0\t0\t0\t0", "5\t0\t0\t0\t0\t0\t0",
    ]))
    sts = {
        "train": pd.DataFrame({"sentence1": ["the dog is RUNNING"], "sentence2": ["A dog runs"]}),
        "dev": pd.DataFrame({"sentence1": ["A man plays"], "sentence2": ["A man sings"]}),
    }
    return sick, flags, sts


def test_select_sick_drops_flagged_and_text_matched_pairs(tmp_path: Path) -> None:
    sick, flags, sts = _sick_frames(tmp_path)
    kept, report = select_sick(sick, flags, sts)
    assert kept["pair_id"].tolist() == ["3", "4", "5"]
    assert report["dropped_pair_flag"] == 1
    assert report["dropped_text_match"] == 2
    assert report["dropped_text_match_not_flagged"] == 1
    assert report["sentence_flag_only"] == 1
    assert (report["dropped"], report["used"], report["policy"]) == (2, 3, "pair")


def test_select_sick_strict_policy_drops_sentence_flags(tmp_path: Path) -> None:
    sick, flags, sts = _sick_frames(tmp_path)
    kept, report = select_sick(sick, flags, sts, drop_sentence_overlap=True)
    assert kept["pair_id"].tolist() == ["4", "5"]
    assert report["policy"] == "pair+sentence"


# ---------------------------------------------------------------------------------------------
# EDA operations


@pytest.mark.parametrize("seed", range(7))
def test_random_swap_keeps_the_multiset(seed: int) -> None:
    out = random_swap(SENTENCE, 3, random.Random(seed))
    assert Counter(out) == Counter(SENTENCE)
    assert out != SENTENCE


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    remaining = iter(long)
    return all(token in remaining for token in short)


@pytest.mark.parametrize(("seed", "p"), [(s, p) for s in range(5) for p in (0.1, 0.5, 1.0)])
def test_random_deletion_only_removes_and_never_empties(seed: int, p: float) -> None:
    out = random_deletion(SENTENCE, p, random.Random(seed))
    assert 1 <= len(out) <= len(SENTENCE)
    assert _is_subsequence(out, SENTENCE)
    assert random_deletion(["Wow"], 1.0, random.Random(seed)) == ["Wow"]


@pytest.mark.parametrize("seed", range(5))
def test_synonym_replacement_uses_wordnet_synonyms(wordnet: WordNet, seed: int) -> None:
    out = synonym_replacement(SENTENCE, 2, random.Random(seed), wordnet)
    assert len(out) == len(SENTENCE)
    changed = [(old, new) for old, new in zip(SENTENCE, out) if old != new]
    assert 1 <= len({old for old, _ in changed}) <= 2
    for old, new in changed:
        assert old.lower() not in STOP_WORDS
        assert new.lower() in {w.replace("-", " ") for w in wordnet.synonyms(old)}


def test_synonym_replacement_leaves_stop_words(wordnet: WordNet) -> None:
    words = "it was not that they had been there".split()
    assert synonym_replacement(words, 5, random.Random(0), wordnet) == words


@pytest.mark.parametrize("seed", range(5))
def test_random_insertion_adds_synonyms_of_sentence_words(wordnet: WordNet, seed: int) -> None:
    out = random_insertion(SENTENCE, 2, random.Random(seed), wordnet)
    assert len(out) == len(SENTENCE) + 2
    assert _is_subsequence(SENTENCE, out)
    pool = {s for word in SENTENCE for s in clean_synonyms(wordnet, word)}
    extra = Counter(out) - Counter(SENTENCE)
    assert all(token in pool for token in extra)


# ---------------------------------------------------------------------------------------------
# EDA over tables


def _sst_frame(rows: int = 11) -> pd.DataFrame:
    sentences = ["a truly good movie", "bad acting ruins the film", "it is what it is", "wow",
                 "the story of a happy family ends in sadness", "No. ."]
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(rows)],
        "sentence1": [sentences[i % len(sentences)] for i in range(rows)],
        "label": pd.Series([i % 5 for i in range(rows)], dtype="int64"),
    })


def test_augment_frame_keeps_labels_and_never_empties(wordnet: WordNet) -> None:
    frame = _sst_frame()
    cfg = AugmentConfig(eda_copies=3)
    out, report = augment_frame(frame, cfg, random.Random(3), wordnet)
    origin = out["id"].str.rsplit("-eda", n=1).str[0]
    labels = dict(zip(frame["id"], frame["label"]))
    assert (out["label"] == origin.map(labels)).all()
    assert out["label"].dtype == frame["label"].dtype
    assert out["sentence1"].str.strip().str.len().min() > 0
    assert out["id"].is_unique and set(out["source"]) <= {f"eda:{op}" for op in EDA_OPS}
    assert sum(report["per_op"].values()) == len(out) == report["copies"]
    assert report["copies"] + report["copies_not_made"] == len(frame) * 3
    texts = dict(zip(frame["id"], frame["sentence1"]))
    assert all(texts[o] != s for o, s in zip(origin, out["sentence1"]))


def test_augment_frame_is_deterministic_per_seed(wordnet: WordNet) -> None:
    frame, cfg = _sst_frame(), AugmentConfig(eda_copies=2)
    first, _ = augment_frame(frame, cfg, random.Random(5), wordnet)
    again, _ = augment_frame(frame, cfg, random.Random(5), wordnet)
    other, _ = augment_frame(frame, cfg, random.Random(6), wordnet)
    pd.testing.assert_frame_equal(first, again)
    assert first["sentence1"].tolist() != other["sentence1"].tolist()


def test_augment_frame_pairs_change_both_columns_with_one_op(wordnet: WordNet) -> None:
    frame = pd.DataFrame({"id": ["p1"], "sentence1": ["a man plays a loud guitar"],
                          "sentence2": ["a woman sings a quiet song"], "label": [3.4]})
    cfg = AugmentConfig(eda_copies=1, synonym_rate=0, insert_rate=0, delete_rate=0)
    out, report = augment_frame(frame, cfg, random.Random(0), wordnet)
    assert report["per_op"]["swap"] == 1 and out["source"].tolist() == ["eda:swap"]
    for column in ("sentence1", "sentence2"):
        assert sorted(out[column][0].split()) == sorted(frame[column][0].split())
    assert out["label"].tolist() == [3.4]


def test_augment_frame_rejects_all_zero_rates(wordnet: WordNet) -> None:
    cfg = AugmentConfig(synonym_rate=0, insert_rate=0, swap_rate=0, delete_rate=0)
    with pytest.raises(ValueError, match="all EDA rates are 0"):
        augment_frame(_sst_frame(), cfg, random.Random(0), wordnet)


# ---------------------------------------------------------------------------------------------
# build_augmented on synthetic prepared tables


def _project(tmp_path: Path) -> tuple[Path, Path]:
    prepared, raw = tmp_path / "prepared", tmp_path / "raw"
    write_prepared(_sst_frame(13), prepared / "sst-train.parquet")
    para = pd.DataFrame({"id": ["q1", "q2", "q3"],
                         "sentence1": ["how do I cook rice", "why", "a b"],
                         "sentence2": ["how to cook rice", "why not", "c d"],
                         "label": pd.Series([1, 0, 0], dtype="int64")})
    write_prepared(para, prepared / "para-train.parquet")
    sts = pd.DataFrame({"id": ["t1", "t2"], "sentence1": ["A man plays", "A dog runs."],
                        "sentence2": ["A man sings", "The dog is running"], "label": [2.5, 4.0]})
    write_prepared(sts, prepared / "sts-train.parquet")
    write_prepared(sts.iloc[:0], prepared / "sts-dev.parquet")
    sick, flags, _ = _sick_frames(tmp_path / "sick")
    _write(raw / SICK_FILE, (tmp_path / "sick" / "SICK.txt").read_text().splitlines())
    _write(raw / SICK_OVERLAP_FILE, (tmp_path / "sick" / "flags.tsv").read_text().splitlines())
    return prepared, raw


def test_build_augmented_writes_every_task(tmp_path: Path) -> None:
    prepared, raw = _project(tmp_path)
    cfg = AugmentConfig(eda_tasks=("sst",), eda_copies=2, wordnet_dir=str(WORDNET_DIR))
    report = build_augmented(prepared, raw, tmp_path / "out", cfg, seed=11)
    tables = {t: read_prepared(tmp_path / "out" / f"{t}-train.parquet")
              for t in ("sst", "para", "sts")}
    for task, table in tables.items():
        assert table["id"].is_unique
        assert table.columns[-1] == "source"
        assert report["tasks"][task]["rows_after"] == len(table)
        original = read_prepared(prepared / f"{task}-train.parquet")
        orig_rows = table[table["source"] == "orig"].drop(columns="source")
        pd.testing.assert_frame_equal(orig_rows, original)
    assert set(tables["para"]["source"]) == {"orig"}
    sick = tables["sts"][tables["sts"]["source"] == "sick"]
    # pair 1 flagged, pair 2 equals STS train t2 reversed; 3..5 kept with 1->0, 3->2.5, 5->5.
    assert sick["id"].tolist() == ["sick-3", "sick-4", "sick-5"]
    assert sick["label"].tolist() == [0.0, 2.5, 5.0]
    assert report["sick"]["used"] == 3 and report["sick"]["sts_tables_checked"] == ["dev", "train"]
    assert report["eda"]["sst"]["copies"] > 13
    assert len(tables["sst"]) == 13 + report["eda"]["sst"]["copies"]
    assert tables["sst"]["source"].str.startswith("eda:").sum() == report["eda"]["sst"]["copies"]


def test_build_augmented_same_seed_same_files(tmp_path: Path) -> None:
    prepared, raw = _project(tmp_path)
    cfg = AugmentConfig(eda_tasks=("sst", "sts"), eda_copies=1, wordnet_dir=str(WORDNET_DIR))
    build_augmented(prepared, raw, tmp_path / "a", cfg, seed=3)
    build_augmented(prepared, raw, tmp_path / "b", cfg, seed=3)
    build_augmented(prepared, raw, tmp_path / "c", cfg, seed=4)
    read = lambda d: read_prepared(tmp_path / d / "sst-train.parquet")  # noqa: E731
    pd.testing.assert_frame_equal(read("a"), read("b"))
    assert not read("a").equals(read("c"))


def test_build_augmented_off_copies_and_reports_missing_inputs(tmp_path: Path) -> None:
    prepared, raw = _project(tmp_path)
    off = AugmentConfig(sick=False, eda_tasks=(), wordnet_dir=str(tmp_path / "no-wordnet"))
    report = build_augmented(prepared, raw, tmp_path / "out", off, seed=0)
    assert all(r["rows_before"] == r["rows_after"] for r in report["tasks"].values())
    with pytest.raises(WordNetMissingError, match=str(tmp_path / "no-wordnet")):
        build_augmented(prepared, raw, tmp_path / "out", replace(off, eda_tasks=("sst",)), seed=0)
    (raw / SICK_OVERLAP_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="augment.sick"):
        build_augmented(prepared, raw, tmp_path / "out", replace(off, sick=True), seed=0)
