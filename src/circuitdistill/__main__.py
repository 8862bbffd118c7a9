"""``python -m circuitdistill``: the same command line as ``circuitdistill``."""
from circuitdistill.cli.main import app

if __name__ == "__main__":
    app(prog_name="circuitdistill")
