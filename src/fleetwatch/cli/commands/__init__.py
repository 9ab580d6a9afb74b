"""Every ``fleetwatch`` command, in the order ``fleetwatch --help`` lists them."""

from fleetwatch.cli.commands import (
    aggregate,
    broker,
    dashboard,
    demo,
    evaluate,
    import_file,
    models,
    schedule,
    score,
    simulate,
    sql,
    status,
    topics,
    train,
)
from fleetwatch.cli.parser import Command

COMMANDS: tuple[Command, ...] = tuple(
    module.COMMAND
    for module in (
        broker,
        topics,
        simulate,
        import_file,
        aggregate,
        train,
        models,
        score,
        sql,
        schedule,
        status,
        dashboard,
        evaluate,
        demo,
    )
)
