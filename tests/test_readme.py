"""README.md and docs/: the code blocks marked as run do run as written, and every relative link finds its file."""
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- tests/test_readme.py runs this block -->"


def marked_blocks():
    """(language, code) of every fenced block of README.md that follows MARK on the line before its fence."""
    text = (ROOT / "README.md").read_text()
    return re.findall(re.escape(MARK) + r"\n```(\w*)\n(.*?)\n```\n", text, flags=re.S)


def test_readme_marks_its_offline_example_and_the_own_videos_writer():
    blocks = marked_blocks()
    assert len(blocks) == (ROOT / "README.md").read_text().count(MARK) == 2  # none lost to a changed fence
    assert blocks[0][0] == "python" and "build_model(tiny_config(" in blocks[0][1]


@pytest.mark.parametrize("language,code", marked_blocks())
def test_a_marked_readme_block_runs_as_written(language, code, tmp_path):
    """Each block runs from a fresh folder, as a reader who pastes it would, with the repository on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    if language != "python":  # the own-videos writer: the layout README describes
        root = tmp_path / "my_videos"
        assert sorted(p.name for p in root.iterdir())[:2] == ["classes.txt", "val.txt"]
        assert len(list(root.glob("video*/frames/*.png"))) == len(list(root.glob("video*/labels/*.png"))) == 8 * 24


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page):
    """The anchors of a page's headings (GitHub numbers repeats: name, name-1, ...); code blocks skipped."""
    seen, found = {}, set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), flags=re.M):
        name = slug(heading)
        found.add(f"{name}-{seen[name]}" if name in seen else name)
        seen[name] = seen.get(name, 0) + 1
    return found


def links(page):
    """The targets of a page's Markdown links and images, outside code blocks and inline code."""
    text = re.sub(r"```.*?```|`[^`\n]*`(?!\])", "", page.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_finds_its_file_and_heading(page):
    checked = 0
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: no file {file}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: link to {target}: no such heading in {file.name}"
        checked += 1
    assert checked > 0, f"{page.name} links to nothing here"  # so that a broken parser cannot pass silently


def test_the_link_checker_sees_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A `b` heading, here\n\n[x](missing.png) `[not](a-link.md)` [y](#a-b-heading-here) [z](#gone)\n")
    assert links(page) == ["missing.png", "#a-b-heading-here", "#gone"]
    assert anchors(page) == {"a-b-heading-here"}
