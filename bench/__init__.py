"""Benchmarks of wr124-session-actor: ``python -m bench`` (or ``wr124-session bench``).

One module per scenario (``chatty``, ``keepall``, ``langgraph_peer``, ``sessions``, ``large_states``,
``cache``), each with ``run(params) -> ScenarioResult``; shared helpers in ``_common``; the reference
server's wrapper in ``_server``; the original client's baseline re-implementation in ``_original``.
"""
