"""Pure-torch compression math: no Lightning imports here, so anyone can use it without a Trainer."""
