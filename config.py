"""Settings, one way: a frozen dataclass per concern, a one-line comment on each field with its default; its
__post_init__ checks the fields with check (a one-line error naming the flag); a command line adds one flag per
field with flag (its help, the field's default) and builds the config from the parsed flags with fields_of.
"""
import dataclasses

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


def flag(group, cfg, name, help, **kw):
    """--name (dashes for underscores) for the field `name` of cfg, with the field's value as its default."""
    default = getattr(cfg, name)
    if isinstance(default, bool):
        kw["action"] = "store_true"
    elif isinstance(default, tuple):
        kw.update(type=type(default[0]), nargs=len(default))
    elif default is not None:
        kw.setdefault("type", type(default))
    group.add_argument("--" + name.replace("_", "-"), default=default, help=help, **kw)


def fields_of(cls, values):
    """The values that name fields of the dataclass cls -> {field: value}. values: parsed flags (an
    argparse.Namespace) or a dict of them."""
    values = values if isinstance(values, dict) else vars(values)
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
