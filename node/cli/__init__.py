"""The ``rakis`` command line (Typer), one module per command group.

- ``app``: the root app (``rakis``): global options, ``init``, ``id``, and the
  registration of every group below; the console script points at ``node.cli.app:app``.
- ``common``: what every group shares (``--data-dir``, ``fail``); it imports no other CLI
  module, so the root can import every group without an import cycle.
- ``node_group``: ``rakis node start``.
- ``client_group``: ``rakis submit | result | verify | logs | workers``.
- ``testnet_group``: ``rakis testnet up | status | down | demo | partition | heal``.
- ``models_group``: ``rakis models list | add``: the models a node knows, and adding your own.
- ``progress``: rich live displays (request stages, testnet start-up, model loading).
"""
