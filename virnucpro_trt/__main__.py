"""`python -m virnucpro_trt` runs the command-line interface."""

from virnucpro_trt.cli.main import console

if __name__ == "__main__":
    console()
