"""The code in the documentation runs, and every public name is documented.

Every ```python block of `docs/**/*.md` (other than the tables that the example and
benchmark scripts generate) and of `README.md` is run, in float64. The blocks of one
page run in order in one namespace, as a reader would run them. A block preceded by
the line `<!-- test: skip -->` (invisible on the rendered page) is not run: use it for
code that is too slow for the test suite, such as a full training run, and say on the
page which test or script covers it instead.
"""

import contextlib
import io
import pathlib
import re
import textwrap

import diffrax_implicit_node
import jax
import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Written by `examples/*.py` and `benchmarks/*.py`, included into pages as snippets.
GENERATED = (DOCS / "examples", DOCS / "benchmarks")
SKIP_MARKER = "<!-- test: skip -->"

_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


def _markdown_files() -> list[pathlib.Path]:
    files = [
        path
        for path in sorted(DOCS.rglob("*.md"))
        if not any(path.is_relative_to(generated) for generated in GENERATED)
    ]
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    return files


def extract_python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """Returns `(line number, code, skip)` for each ```python fenced block of a
    Markdown text, including blocks indented inside admonitions."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence)}\s*$")
        start = i + 1
        end = start
        while end < len(lines) and closing.match(lines[end]) is None:
            end += 1
        language = info.split()[0].lstrip(".{") if info else ""
        if language in ("python", "py"):
            previous = next(
                (line.strip() for line in reversed(lines[:i]) if line.strip()), ""
            )
            code = textwrap.dedent("\n".join(lines[start:end]))
            blocks.append((start + 1, code, previous == SKIP_MARKER))
        i = end + 1
    return blocks


def _pages_with_code() -> list[pathlib.Path]:
    return [
        path
        for path in _markdown_files()
        if extract_python_blocks(path.read_text(encoding="utf-8"))
    ]


@pytest.fixture
def float64():
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize(
    "path", _pages_with_code(), ids=lambda path: str(path.relative_to(ROOT))
)
def test_code_blocks_run(path: pathlib.Path, float64, tmp_path, monkeypatch):
    # Blocks that write files write them into a temporary directory.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    blocks = extract_python_blocks(path.read_text(encoding="utf-8"))
    ran = 0
    for line, code, skip in blocks:
        if skip:
            continue
        compiled = compile(code, f"{path.relative_to(ROOT)}:{line}", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compiled, namespace)
        ran += 1
    if ran == 0:
        pytest.skip("every code block on this page is marked to skip")


def test_extract_python_blocks():
    text = textwrap.dedent(
        """\
        Text.

        ```python
        a = 1
        ```

        ```text
        not code
        ```

        !!! info

            ```python
            b = 2
            ```

        <!-- test: skip -->
        ```python
        slow()
        ```
        """
    )
    blocks = extract_python_blocks(text)
    assert [(code, skip) for _, code, skip in blocks] == [
        ("a = 1", False),
        ("b = 2", False),
        ("slow()", True),
    ]


def _documented_names() -> set[str]:
    names = set()
    for path in (DOCS / "api").glob("*.md"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"^:::\s*diffrax_implicit_node\.(\w+)", text, re.M))
    return names


def test_every_public_name_is_documented():
    public = {
        name
        for name in dir(diffrax_implicit_node)
        if not name.startswith("_")
        and getattr(getattr(diffrax_implicit_node, name), "__module__", "").startswith(
            "diffrax_implicit_node"
        )
    }
    missing = public - _documented_names()
    assert not missing, (
        f"Public names without a `::: diffrax_implicit_node.NAME` entry under "
        f"docs/api/: {sorted(missing)}"
    )


def test_documented_names_exist():
    # mkdocs would catch this too, but only in the (separate) strict docs build.
    for name in _documented_names():
        assert hasattr(diffrax_implicit_node, name), name
