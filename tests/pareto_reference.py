"""The Pareto front by its definition, for the tests of the front bertnli computes."""


def brute_force(rows: list[dict], objectives, constraints) -> set[int]:
    """By the definition, pair by pair: a feasible row is on the front unless a feasible row is as good on every
    objective and better on one."""

    def better_or_equal(a, b, o):
        return a[o.name] >= b[o.name] if o.direction == "max" else a[o.name] <= b[o.name]

    def strictly_better(a, b, o):
        return a[o.name] > b[o.name] if o.direction == "max" else a[o.name] < b[o.name]

    ok = [r for r in rows if all(c.holds(r[c.name]) for c in constraints)]
    return {
        r["number"]
        for r in ok
        if not any(
            all(better_or_equal(s, r, o) for o in objectives) and any(strictly_better(s, r, o) for o in objectives)
            for s in ok
        )
    }
