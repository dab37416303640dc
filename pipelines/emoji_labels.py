"""The emoji data set's label vocabularies, shared by the data loader and every model trained on it.

The order is the class id: changing it changes what every shipped emoji model's outputs mean.
"""

CATEGORIES: list[str] = [
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]
STYLES: list[str] = ["noto", "twemoji"]


def category_phrase(category: str) -> str:
    """A category as the captions and prompts write it: "Smileys & Emotion" -> "smileys and emotion"."""
    return category.lower().replace("&", "and")
