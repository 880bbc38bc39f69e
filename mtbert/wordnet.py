"""A small offline reader of the WordNet 3.0 database files (Debian package ``wordnet-base``).

Only what EDA needs: the synonyms of a word, i.e. the lemma names of every synset that the
word (or its base form) belongs to. The files read are the plain-text database of
``/usr/share/wordnet``:

- ``index.<pos>``: one line per lemma, ``lemma pos synset_cnt p_cnt [ptr]*p_cnt sense_cnt
  tagsense_cnt offset*synset_cnt``; licence lines start with two spaces.
- ``data.<pos>``: one synset per line at byte ``offset``: ``offset lex_filenum ss_type w_cnt
  (word lex_id)*w_cnt ...``, with ``w_cnt`` in hexadecimal and adjective words possibly
  marked ``(a)``, ``(p)`` or ``(ip)``.
- ``<pos>.exc``: irregular inflections (``mice mouse``), used with the suffix rules of
  WordNet's morphy to find base forms, as ``nltk.corpus.wordnet.synsets`` does.

We read the files ourselves instead of through nltk: nltk's reader also wants a ``lexnames``
file that Debian does not ship, and ~100 lines here avoid a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_PACKAGE = "wordnet-base"
POS_FILES: dict[str, str] = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet's morphy detachment rules: (suffix, replacement) tried in order, per part of speech.
_SUFFIX_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
_ADJ_MARKERS = ("(a)", "(p)", "(ip)")


class WordNetMissingError(FileNotFoundError):
    """The WordNet database files are not where the config says."""


def _required_files(root: Path) -> list[Path]:
    names = [f"{kind}.{pos}" for pos in POS_FILES.values() for kind in ("index", "data")]
    return [root / name for name in names]


def _read_index(path: Path) -> dict[str, tuple[int, ...]]:
    """lemma -> synset byte offsets, from one ``index.<pos>`` file."""
    index: dict[str, tuple[int, ...]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):
                continue  # licence header
            parts = line.split()
            synset_cnt, p_cnt = int(parts[2]), int(parts[3])
            first = 4 + p_cnt + 2
            index[parts[0]] = tuple(int(o) for o in parts[first:first + synset_cnt])
    return index


def _read_exceptions(path: Path) -> dict[str, tuple[str, ...]]:
    """inflected form -> base forms, from one ``<pos>.exc`` file (absent file: no exceptions)."""
    if not path.is_file():
        return {}
    table: dict[str, tuple[str, ...]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            table[parts[0]] = tuple(parts[1:])
    return table


def _synset_words(data: bytes, offset: int) -> tuple[str, ...]:
    """The lemma names of the synset stored at byte `offset` of a ``data.<pos>`` file."""
    end = data.index(b"\n", offset)
    parts = data[offset:end].decode("utf-8").split()
    count = int(parts[3], 16)
    words = []
    for word in parts[4:4 + 2 * count:2]:
        for marker in _ADJ_MARKERS:
            word = word.removesuffix(marker)
        words.append(word.lower())
    return tuple(words)


@dataclass
class WordNet:
    """Synonym look-ups over the WordNet database in `root` (use `load_wordnet`)."""

    root: Path
    index: dict[str, dict[str, tuple[int, ...]]] = field(repr=False)
    exceptions: dict[str, dict[str, tuple[str, ...]]] = field(repr=False)
    data: dict[str, bytes] = field(repr=False)
    _cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def base_forms(self, word: str, pos: str) -> list[str]:
        """Lemmas in the ``pos`` index that `word` can be an inflection of (morphy), word first."""
        word = word.lower().replace(" ", "_")
        candidates = [word, *self.exceptions[pos].get(word, ())]
        candidates += [word[: -len(old)] + new for old, new in _SUFFIX_RULES[pos]
                       if word.endswith(old) and len(word) > len(old)]
        seen: list[str] = []
        for form in candidates:
            if form in self.index[pos] and form not in seen:
                seen.append(form)
        return seen

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Other lemma names of every synset of `word`, any part of speech, in WordNet order.

        Underscores become spaces (``"look_into"`` -> ``"look into"``); `word` itself and its
        base forms are left out. Unknown words have no synonyms.
        """
        key = word.lower()
        if key not in self._cache:
            found: list[str] = []
            own = {key}
            for pos in POS_FILES:
                for lemma in self.base_forms(key, pos):
                    own.add(lemma.replace("_", " "))
                    for offset in self.index[pos][lemma]:
                        words = _synset_words(self.data[pos], offset)
                        found.extend(w.replace("_", " ") for w in words)
            self._cache[key] = tuple(dict.fromkeys(w for w in found if w not in own))
        return self._cache[key]


def load_wordnet(root: str | Path) -> WordNet:
    """Read the WordNet index, exception and data files in `root`.

    Raises:
        WordNetMissingError: a required file is missing; the message names the directory and
            the Debian package that provides it.
    """
    root = Path(root)
    missing = [p.name for p in _required_files(root) if not p.is_file()]
    if missing:
        raise WordNetMissingError(
            f"WordNet database not found in {root} (missing: {', '.join(missing)}); install the "
            f"Debian package '{DEBIAN_PACKAGE}' (apt-get install -y {DEBIAN_PACKAGE}) or set "
            "augment.wordnet_dir to a directory holding WordNet 3.0's index.* and data.* files"
        )
    index = {pos: _read_index(root / f"index.{name}") for pos, name in POS_FILES.items()}
    exceptions = {pos: _read_exceptions(root / f"{name}.exc") for pos, name in POS_FILES.items()}
    data = {pos: (root / f"data.{name}").read_bytes() for pos, name in POS_FILES.items()}
    return WordNet(root, index, exceptions, data)
