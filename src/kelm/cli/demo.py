"""`kelm demo`: the main job."""


def demo() -> None:
    """Run the offline demo."""
