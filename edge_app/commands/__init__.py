"""One module per ``wbc-counter`` verb: ``add_parser(sub)`` and ``main(args)``."""
