"""Print a resolved config: `python -m dinov3_us.configs [--config-file F] [section.key=value ...]`.

`--keys` prints every key instead: its type, default, valid values and documentation.
"""

import argparse
import os
import sys

import yaml

from dinov3_us.configs.config import load_config, pretrain_schema
from dinov3_us.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Resolve defaults <- config file <- overrides and print the result as YAML (exit 2 on a bad config)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config-file", default=None)
    parser.add_argument("--keys", action="store_true", help="list every key (type, default, valid values, doc)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.keys:
            print("\n".join(pretrain_schema().describe()))
        else:
            yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error
        # Python flushes stdout again at exit; point it at devnull so that flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
