"""``python -m edgefleet.agent``: the agent's commands without the controller's."""

from edgefleet.agent.cli import app

app(prog_name="edgefleet agent")
