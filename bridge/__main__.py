"""`python -m bridge`: the command line lives in `bridge.cli`."""

from bridge.cli.main import main

if __name__ == "__main__":
    main()
