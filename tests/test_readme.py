"""The README's code is executed, and CI runs the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_blocks_run():
    code = blocks("python")
    assert code, "README has no python example"
    for block in code:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - executing our own README


def test_ci_runs_the_readme_test_command():
    bash = blocks("bash")
    block = next(b.strip().splitlines() for b in bash if "pytest" in b and "setup.sh test" in b)
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    test_cmd = next(line for line in block if "pytest" in line)
    assert test_cmd in ci.splitlines()
    for line in block:  # the system packages the README installs, CI installs too
        if line.startswith("apt-get install"):
            for package in line.split()[3:]:
                assert f"apt-get install -y -qq {package}" in ci, package


def test_quick_start_demo_command_is_what_the_cli_test_runs():
    assert "./setup.sh && .venv/bin/learnpos demo" in [b.strip() for b in blocks("bash")]
