"""Regenerate the README's config reference from the dataclass field docstrings.

    python -m rnn_train.docs > /dev/null   # prints the table; tests check the README holds it
"""
from .config import describe_fields

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def config_reference() -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tname, default, doc in describe_fields():
        rows.append(f"| `{key}` | {tname} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_reference())
