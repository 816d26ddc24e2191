"""The training engine: one loop (`Trainer`) for every task, strategy and world size.

The engine owns its contract (`kelm.train.task`): what a task and a model may give it. It imports
nothing above itself; `kelm.app.run_training` composes a config, a task and the engine.
"""
