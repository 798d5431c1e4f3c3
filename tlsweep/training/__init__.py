"""What trains, at which learning rate, in which epoch, and the loop that trains it.

- `recipes`: each strategy's recipe (conf/strategy/<name>.yaml), its keys checked, looked up by name.
- `strategies`: a recipe applied to a model (`apply` -> `Plan`): the one place that decides what trains at which LR.
- `adapters`: LoRA and DoRA through peft.
- `optim`: the optimizer and LR schedule over a plan's parameter groups.
- `loop`: the training loop over built objects (`fit`); it never reads the config.
"""
