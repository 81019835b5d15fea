"""The README's Python API example runs as written, and its commands are valid."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fastnas.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(marker: str) -> str:
    text = README.read_text()
    start = text.index(marker)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {marker!r} in README.md"
    return match.group(1)


def test_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = _python_block_after("<!-- api-example")
    namespace: dict[str, object] = {}
    exec(compile(code, "<README.md api example>", "exec"), namespace)
    assert "Genotype(normal=[" in capsys.readouterr().out
    assert (tmp_path / "genotype.json").is_file()


def test_readme_fastnas_commands_parse() -> None:
    text = README.read_text()
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)).replace("\\\n", " ")  # continuations
    # plain commands, chained ones, and torchrun's `-m fastnas ...`
    pattern = r"(?:^|&& |torchrun [^\n]*-m )fastnas ((?:search|info|train|rank|plot)[^\n]*)"
    commands = [m.group(1) for m in re.finditer(pattern, bash, re.M)]
    assert any(c.startswith("search") for c in commands) and any(c.startswith("info") for c in commands)
    for command in commands:
        argv = shlex.split(command.replace("/path/to/", "/tmp/"))
        if "--help" in argv:
            with pytest.raises(SystemExit) as exit_info:
                build_parser(argv).parse_args(argv)
            assert exit_info.value.code == 0, command
        else:
            build_parser(argv).parse_args(argv)


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    test_block = re.search(r"Run the tests.*?```bash\n(.*?)```", text, re.S)
    assert test_block
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_block.group(1).strip() in ci
