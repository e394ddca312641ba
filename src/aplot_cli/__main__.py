"""`python -m aplot_cli` entry point (also used by `accelerate launch -m aplot_cli`)."""

from aplot_cli.cli import main

if __name__ == "__main__":
    main()
