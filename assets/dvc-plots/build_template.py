"""Build template.html, the page `dvc plots show` fills (.dvc/config: plots.html_template), with the
chart libraries inlined so that the page draws its vega charts offline.

DVC's default page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net through its
`{scripts}` placeholder; this template leaves that placeholder out and carries the same versions
(those dvc_render's VegaRenderer pins) as inline scripts, fetched from the npm registry:

    python assets/dvc-plots/build_template.py            # npm pack, check, write template.html
    python assets/dvc-plots/build_template.py --check    # does template.html match the pins?

`npm pack` checks each tarball against the registry's integrity hash; the sha256 pins below then
check the very files inlined. All three are BSD-3-Clause (LICENSE-* here).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template.html"
# package@version -> (file in the tarball, sha256 of that file)
PACKAGES = {
    "vega@5.20.2": ("package/build/vega.min.js",
                    "4794d0169cb1f3ebad8117fe98ba5bd652dd725905ec0384e832391dbccb03be"),
    "vega-lite@5.2.0": ("package/build/vega-lite.min.js",
                        "d73157451b3978015ab31dacd55ff90d986ab8663fc0abed50f97b3cd90002cb"),
    "vega-embed@6.18.2": ("package/build/vega-embed.min.js",
                          "1ba9826431ddc9805e815ad92acc811c819f2bfd32bda2a128b8c4b5070fab5e"),
}
SCRIPT = re.compile(r'<script data-package="([^"]+)" data-sha256="([0-9a-f]{64})">\n(.*?)\n</script>', re.S)
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>mtbert plots</title>
    <!-- Written by assets/dvc-plots/build_template.py. The chart libraries are inline (BSD-3-Clause,
         see assets/dvc-plots/LICENSE-*), not loaded from a CDN: the page works offline. -->
@LIBRARIES@
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def inline_scripts(template: str) -> dict[str, tuple[str, str]]:
    """package -> (sha256 it claims, sha256 of the inlined text) for each inline script."""
    return {m[1]: (m[2], hashlib.sha256(m[3].encode()).hexdigest()) for m in SCRIPT.finditer(template)}


def render(sources: dict[str, str]) -> str:
    """The page, with the library text `sources` (package -> JavaScript) inlined in pin order."""
    blocks = []
    for package, (_, sha) in PACKAGES.items():
        text = sources[package]
        if hashlib.sha256(text.encode()).hexdigest() != sha or "</script" in text.lower() \
                or "{plot_divs}" in text or "{refresh_tag}" in text:
            raise ValueError(f"{package}: not the pinned file (sha256 {sha})")
        blocks.append(f'<script data-package="{package}" data-sha256="{sha}">\n{text}\n</script>')
    # DVC fills the page by str.replace of {refresh_tag} and {plot_divs} (dvc_render.html), so the
    # library text goes in verbatim (no str.format: minified JavaScript is full of braces).
    return PAGE.replace("@LIBRARIES@", "\n".join(blocks))


def fetch(workdir: Path) -> dict[str, str]:
    """npm pack each package into `workdir`; the pinned file's text, and its LICENSE copied here."""
    subprocess.run(["npm", "pack", "--silent", *PACKAGES], cwd=workdir, check=True, capture_output=True)
    sources = {}
    for package, (member, _) in PACKAGES.items():
        name, version = package.rsplit("@", 1)
        with tarfile.open(workdir / f"{name}-{version}.tgz") as tar:
            sources[package] = tar.extractfile(member).read().decode()
            (HERE / f"LICENSE-{name}").write_bytes(tar.extractfile("package/LICENSE").read())
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check template.html against the pins")
    args = parser.parse_args(argv)
    if args.check:
        found = inline_scripts(TEMPLATE.read_text(encoding="utf8"))
        want = {package: (sha, sha) for package, (_, sha) in PACKAGES.items()}
        print("template.html matches the pins" if found == want else f"template.html differs: {found}")
        return 0 if found == want else 1
    with tempfile.TemporaryDirectory() as tmp:
        TEMPLATE.write_text(render(fetch(Path(tmp))), encoding="utf8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
