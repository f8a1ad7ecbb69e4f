"""The ``lsknet`` command line: the only layer that knows about argv, exit codes and the terminal."""
