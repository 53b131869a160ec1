"""The run actions the Runs screen and the Training view share: stop, start/resume, evaluate, chat.

Each such screen says which run an action applies to (`_require_run`) and what to refresh afterwards
(`after_run_action`); the work itself is glmcore's, in a thread worker.
"""

from __future__ import annotations

import dataclasses

from textual import work
from textual.binding import ActiveBinding

from glmcore import runs as run_control
from glmcore.runs import Run, RunStatus
from glmtui.messages import ChatWith, EvaluateRun
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.runs import start_or_resume_sentence


class RunActions(WorkbenchScreen):
    """A workbench screen that knows its current run (`_require_run`) and offers the actions on it."""

    def _require_run(self) -> Run | None:
        raise NotImplementedError

    def status_in_view(self) -> RunStatus | None:
        """The status of the run the keys act on, as last read (None: none, or not read yet)."""
        return None

    @property
    def active_bindings(self) -> dict[str, ActiveBinding]:
        """The footer names Stop for a run that is training and Resume for one that is not, never both (both
        keys still work: the other one says why it does nothing)."""
        bindings = super().active_bindings
        status = self.status_in_view()
        if status is None:
            return bindings
        hidden = "resume_run" if status.is_active else "stop_run"
        return {
            key: active._replace(binding=dataclasses.replace(active.binding, show=False))
            if active.binding.action == hidden
            else active
            for key, active in bindings.items()
        }

    def after_run_action(self) -> None:
        """Called on the UI thread after a stop or resume was asked for."""

    def action_stop_run(self) -> None:
        if run := self._require_run():
            self.stop_run(run)

    @work(thread=True, exit_on_error=False, group="run-actions")
    def stop_run(self, run: Run) -> None:
        status = run_control.stop(run)
        message = (
            f"Took {run.id} out of Slurm's queue (job {status.slurm_job} cancelled before it started)."
            if status.state == "created"
            else f"Asked {run.id} to stop: it saves a checkpoint at its next step and ends."
        )
        self.app.call_from_thread(self.notify, message)
        self.app.call_from_thread(self.after_run_action)

    def action_resume_run(self) -> None:
        if run := self._require_run():
            self.resume_run(run)

    @work(thread=True, exit_on_error=False, group="run-actions")
    def resume_run(self, run: Run) -> None:
        started = run_control.start_or_resume(run, detach=True)
        self.app.call_from_thread(self.notify, start_or_resume_sentence(run.id, started))
        self.app.call_from_thread(self.after_run_action)

    def action_evaluate_run(self) -> None:
        if run := self._require_run():
            self.post_message(EvaluateRun(run))

    def action_chat_run(self) -> None:
        if run := self._require_run():
            self.post_message(ChatWith(run))
