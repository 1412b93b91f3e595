"""A stack's set-up commands in one process:
``python -m tests.support.stack_setup CONFIG [--nats-config] SCOPE...``.

Runs ``nats-iam-resolver token create --name e2e-SCOPE --scope SCOPE`` for each scope and,
with ``--nats-config``, ``nats-iam-resolver nats-config``, through click's runner: the same
commands, the same code, in one interpreter. Each ``nats-iam-resolver`` process spends a
second or two of CPU importing, and ``Stack.start`` used to run four of them beside the
starting service on a 2-core machine. Prints one JSON object:
``{"tokens": {SCOPE: TOKEN}, "nats_config": TEXT or null}``.
"""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from resolver.cli import cli


def _invoke(runner: CliRunner, config: str, *args: str) -> str:
    result = runner.invoke(cli, [*args, "--config", config], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"{args}: exit {result.exit_code}: {result.output}")
    return result.stdout


def main(argv: list[str]) -> None:
    config, *rest = argv
    with_nats_config = "--nats-config" in rest
    scopes = [arg for arg in rest if arg != "--nats-config"]
    runner = CliRunner()
    tokens = {
        scope: _invoke(
            runner, config, "token", "create", "--name", f"e2e-{scope}", "--scope", scope
        )
        .strip()
        .splitlines()[-1]
        .strip()
        for scope in scopes
    }
    nats_config = _invoke(runner, config, "nats-config") if with_nats_config else None
    print(json.dumps({"tokens": tokens, "nats_config": nats_config}))


if __name__ == "__main__":
    main(sys.argv[1:])
