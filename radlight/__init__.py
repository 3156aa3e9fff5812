"""RadLight core: settings, logging, errors, UIDs, queue contracts and the CLI.

This package imports nothing else of the project, so every other part may import it.
"""

__version__ = "0.1.0"

NOT_FOR_PRIMARY_DIAGNOSIS = "NOT FOR PRIMARY DIAGNOSIS"
