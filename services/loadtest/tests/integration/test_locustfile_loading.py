"""The locustfile as Locust loads it, in a separate process (importing Locust patches the
interpreter with gevent): the user class it finds picks tasks in the proportions of the weights,
the defaults or those set through JOTC_LT_WEIGHT_*, read from the environment at import. The same
mix computed in process from user_class(env): unit/test_locustfile_logic.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import ADMIN_TOKEN, assert_mix

# Picks tasks as a running Locust user does (the user's DefaultTaskSet, seeded) from the locustfile as
# Locust loads it; prints how often each task came up, and the locustfile's default weights.
PICK_TASKS = """
import collections, json, random, sys
from locust.env import Environment
from locust.user.task import DefaultTaskSet
from locust.util.load_locustfile import load_locustfile
import jotc_loadtest.locustfile as scenarios

users, _ = load_locustfile(scenarios.__file__)
(user_class,) = users.values()
environment = Environment(user_classes=[user_class])
# What the runner does before it spawns users (this is where a dict set after the class was built
# became its bare keys); the host is never contacted.
environment._filter_tasks_by_tags()
user_class.host = "http://127.0.0.1:9"
user = user_class(environment)
random.seed(20261127)
picks = collections.Counter(DefaultTaskSet(user).get_next_task().__name__ for _ in range(int(sys.argv[1])))
print(json.dumps({"picks": picks, "defaults": scenarios.DEFAULT_WEIGHTS}))
"""
PICKS = 20_000


def pick_tasks(**env: str) -> tuple[dict[str, float], dict[str, int]]:
    """(share of picks per task, the default weights) with only these JOTC_LT_WEIGHT_* / token set."""
    unset = ("JOTC_LT_WEIGHT_", "JOTC_ADMIN_TOKEN", "LOCUST_SKIP_MONKEY_PATCH")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    result = subprocess.run(
        [sys.executable, "-c", PICK_TASKS, str(PICKS)],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"picking tasks failed (exit {result.returncode}): {result.stderr}"
    report = json.loads(result.stdout)
    return {task: count / PICKS for task, count in report["picks"].items()}, report["defaults"]


def test_the_task_mix_follows_the_default_weights() -> None:
    shares, defaults = pick_tasks(JOTC_ADMIN_TOKEN=ADMIN_TOKEN)
    assert_mix(shares, defaults)


def test_the_task_mix_follows_weights_from_the_environment() -> None:
    changed = {"JOTC_LT_WEIGHT_CLASSIC_JSON": "5", "JOTC_LT_WEIGHT_LARGE": "0", "JOTC_LT_WEIGHT_INVALID": "60"}
    shares, defaults = pick_tasks(**changed)
    # No admin token: the admin task is off as well.
    assert_mix(shares, {**defaults, "classic_json": 5, "large": 0, "invalid": 60, "admin": 0})
