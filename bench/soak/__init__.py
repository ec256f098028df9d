"""The soak (`scripts/soak`, docs/soak.md): the whole stack for N minutes under real apps' traffic and a
schedule of faults, and a verdict on what must never happen."""
