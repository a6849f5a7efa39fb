"""Settings, one way: a frozen dataclass per concern, a one-line comment on each field with its default; its
__post_init__ checks the fields with check (a one-line error naming the flag); a command line adds one flag per
field with flag (its help is the field's comment, its default the field's) and builds the config with fields_of.
"""
import dataclasses
import functools
import inspect
import re


def check(cfg, rules):
    """Raises a one-line ValueError for the first field of cfg that breaks its rule: rules = [(field, ok, rule)]."""
    for name, ok, rule in rules:
        if not ok:
            value = getattr(cfg, name)
            if isinstance(value, tuple):
                value = " ".join(map(str, value))
            elif isinstance(value, (int, float)):
                value = f"{value:g}"
            raise ValueError(f"--{name.replace('_', '-')} {value} {rule}")


@functools.cache
def comments(cls) -> dict:
    """{field: its comment} from the source of the dataclass cls; a comment goes on over the lines below it that
    hold only an indented '#   ...' continuation."""
    found, name = {}, None
    for line in inspect.getsource(cls).splitlines():
        code, _, comment = line.partition("#")
        field = re.match(r"\s+(\w+)\s*:.*=", code)
        if field:
            name, found[field.group(1)] = field.group(1), comment.strip()
        elif name and not code.strip() and comment.startswith("  "):
            found[name] += " " + comment.strip()
        else:
            name = None
    return found


def flag(group, cfg, name, help=None, **kw):
    """--name (dashes for underscores) for the field `name` of cfg, with the field's value as its default and its
    comment as its help unless help is given."""
    default = getattr(cfg, name)
    if isinstance(default, bool):
        kw["action"] = "store_true"
    elif isinstance(default, tuple):
        kw.update(type=type(default[0]), nargs=len(default))
    elif default is not None:
        kw.setdefault("type", type(default))
    help = comments(type(cfg)).get(name, "") if help is None else help
    group.add_argument("--" + name.replace("_", "-"), default=default, help=help.replace("%", "%%"), **kw)


def fields_of(cls, values):
    """The values that name fields of the dataclass cls -> {field: value}. values: parsed flags (an
    argparse.Namespace) or a dict of them."""
    values = values if isinstance(values, dict) else vars(values)
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
