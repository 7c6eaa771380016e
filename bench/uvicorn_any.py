"""``python -m uvicorn`` whose ``--http`` also takes a protocol class's import path (module:Class).

uvicorn's ``Config`` accepts one (``taskhub web`` passes ``api.protocol``'s), but its
command line only offers auto/h11/httptools. The benches run both apps through
uvicorn's command line so that they differ only in the app and the protocol.
"""
import click
from uvicorn.main import main

if __name__ == "__main__":
    for param in main.params:
        if param.name == "http":
            param.type = click.STRING
    main()
