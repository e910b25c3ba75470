"""Which model serves a role and how it is had: profiles (``registry.py``), loading through the
libraries' own ``from_pretrained`` paths (``loaders.py``), which models stay resident under memory
budgets (``residency.py``) and the tiny random-weight builders (``tiny/``)."""
