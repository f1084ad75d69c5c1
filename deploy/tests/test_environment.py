"""The checks' own environment is whole: no two installed packages write the same file. (Upstream
detect-secrets and Bridgecrew's fork, which checkov needs, both install detect_secrets/: whichever
was installed last won, so a fresh clone and an old environment scanned with different versions.)"""

from __future__ import annotations

from collections import defaultdict
from importlib import metadata


def test_no_two_installed_packages_write_the_same_file() -> None:
    owners: defaultdict[str, set[str]] = defaultdict(set)
    for distribution in metadata.distributions():
        for path in distribution.files or []:
            if path.suffix == ".py" and ".dist-info" not in str(path):
                owners[str(path)].add(distribution.metadata["Name"])
    shared = {path: sorted(names) for path, names in owners.items() if len(names) > 1}
    assert shared == {}, f"files installed by more than one package: {sorted(shared.items())[:10]}"
