"""The docs travel with the project: no file points outside the repository, and every doc link resolves.

The design notes the project was started from are not part of it; `docs/design.md`, `docs/algorithms.md`
and `docs/transformers-notes.md` replace them. This test fails when a project file names the old notes
or their folder again, and when a relative link (or its `#anchor`) in README.md or docs/*.md is broken.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Spelled in pieces so that this file does not match itself.
SHARED_FOLDER = "../" + "shared"
NOTE_NAMES = re.compile(r"(?<![\w-])(" + "|".join(("DESIGN", "ALGORITHMS", "STACK", "STYLE")) + r")\.md\b")
DOCS = ("design.md", "algorithms.md", "transformers-notes.md")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def project_files() -> list[Path]:
    """Files git tracks, plus new files it does not ignore (deleted ones skipped)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in sorted(set(listed.split("\0"))) if name and (ROOT / name).is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_the_docs_exist():
    for name in DOCS:
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_no_file_refers_to_the_internal_notes():
    offenders = []
    for path in project_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if SHARED_FOLDER in line or NOTE_NAMES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "refer to docs/ instead of the internal notes:\n" + "\n".join(offenders)


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown text outside fenced and indented code blocks, inline code removed."""
    lines, fenced, previous_blank = [], False, True
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        indented_code = previous_blank and (line.startswith("    ") or line.startswith("\t"))
        previous_blank = not line.strip() or (previous_blank and indented_code)
        if fenced or indented_code:
            continue
        lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (repeated headings get -1, -2, ...)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        base = slug(match.group(1))
        count = counts.get(base, 0)
        counts[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text()):
        targets += LINK.findall(line)
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
    return targets


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in links(path):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{path.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_readme_lists_the_docs():
    readme = (ROOT / "README.md").read_text()
    for name in DOCS:
        assert f"(docs/{name})" in readme, f"README.md does not link docs/{name}"


def test_readme_layout_names_every_folder_and_module():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout") : text.index("## Documentation")]
    package = ROOT / "src" / "moeprune"
    folders = [f"src/moeprune/{d.name}/" for d in package.iterdir() if (d / "__init__.py").is_file()]
    modules = [f"`{m.name}`" for m in package.glob("*.py") if m.name != "__init__.py"]
    project_files()  # skips outside a git checkout
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tracked = {name.split("/")[0] for name in listed.splitlines() if "/" in name}
    top = [f"{name}/" for name in tracked if name not in ("src", ".dvc")]
    missing = [name for name in folders + modules + top if name not in layout]
    assert not missing, f"README 'Layout' does not name {missing}"
