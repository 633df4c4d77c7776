"""Progress lines people can read: how long is left."""


def format_duration(seconds):
    """'1h02m', '3m05s' or '12s': a duration for progress lines (ETA)."""
    seconds = int(round(max(0.0, seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def eta(done, total, elapsed):
    """Seconds left when ``done`` of ``total`` units took ``elapsed`` seconds (constant rate)."""
    return elapsed * (total - done) / max(done, 1e-9)
