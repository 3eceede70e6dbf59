"""`learnpos chat`: talk with a dialogue run in the terminal, or replay a script of turns.

The session keeps the whole conversation; each reply is generated from the newest whole
turns that fit the run's block (`dialogue.block_size`, `dialogue.max_turns`), leaving room for
the reply, and the session says when older turns stop fitting. Commands: /reset (forget the
conversation), /history (print it), /help, /quit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TextIO

from learnpos.data.dialogue import Turn
from learnpos.errors import ConfigError, DataError

HELP = "commands: /reset (start over), /history (show the conversation), /help, /quit"


class ChatSession:
    def __init__(self, model, task, user: str | None = None, bot: str | None = None, max_new_tokens: int = 48,
                 out: TextIO | None = None, generator=None, **sampling):
        if getattr(task, "name", "") != "dialogue":
            raise ConfigError(f"`learnpos chat` needs a dialogue run; this is a '{task.name}' run")
        names = task.speakers
        self.model, self.task, self.out = model, task, out if out is not None else sys.stdout
        self.user = task.speaker_id(user if user is not None else names[0])
        if bot is None:
            others = [n for n in names if n != names[self.user]]
            if not others:
                raise ConfigError(f"this run knows one speaker only ({names[0]}); the model needs another to play")
            bot = others[0]
        self.bot = task.speaker_id(bot)
        if self.bot == self.user:
            raise ConfigError(f"--user and --bot are both '{bot}'; the model plays a different speaker than you")
        self.user_name, self.bot_name = names[self.user], names[self.bot]
        block = task.dlg.block_size
        if not 0 < max_new_tokens < block:
            raise ConfigError(f"--max-new-tokens must be in 1..{block - 1} (the block holds {block} tokens)")
        self.max_new_tokens, self.generator, self.sampling = max_new_tokens, generator, sampling
        self.turns: list[Turn] = []
        self.dropped = 0  # older turns already reported as not fitting
        self.last_reply_s = 0.0

    def write(self, line: str = "", end: str = "\n") -> None:
        self.out.write(line + end)
        self.out.flush()

    def handle(self, line: str) -> bool:
        """One line from the user: a command or an utterance. False = the session ends."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/quit", "/exit"):
                return False
            if command == "/reset":
                self.turns, self.dropped = [], 0
                self.write("[conversation reset]")
            elif command == "/history":
                if not self.turns:
                    self.write("[no turns yet]")
                for t in self.turns:
                    who = self.user_name if t.speaker == self.user else self.bot_name
                    self.write(f"{who}: {t.text}")
            elif command == "/help":
                self.write(HELP)
            else:
                self.write(f"[unknown command {command}; {HELP}]")
            return True
        self.reply(text)
        return True

    def reply(self, text: str) -> str:
        turns = [*self.turns, Turn(self.user, text)]
        try:
            layout, start = self.task.fit_history(turns, reply_room=self.max_new_tokens)
        except DataError as e:
            self.write(f"[{e}]")
            return ""
        if start > self.dropped:
            self.write(f"[{start} older turn(s) no longer fit the {self.task.dlg.block_size}-token window "
                       f"(or the {self.task.dlg.max_turns}-turn limit) and are left out]")
            self.dropped = start
        self.write(f"{self.bot_name}> ", end="")
        t0 = time.perf_counter()
        feed = self.task.streamer(lambda piece: self.write(piece, end=""))
        reply = self.task.sample(self.model, [layout], [self.bot], self.max_new_tokens, generator=self.generator,
                                 on_token=feed.on_token, **self.sampling)[0]
        feed.flush()
        self.last_reply_s = time.perf_counter() - t0
        self.write()
        if not reply.strip():
            self.write("[an empty reply]")
        self.turns = [*turns, Turn(self.bot, reply.strip())]  # what the model said, even if nothing
        return reply


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def run_chat(session: ChatSession, lines: Iterable[str] | None = None, echo: bool = False) -> int:
    """Interactive (lines=None: read the terminal) or scripted chat; returns an exit code."""
    if lines is None:
        session.write(f"chatting as {session.user_name} with {session.bot_name}; {HELP}")
        if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 arrive as lone surrogates, not an error
            sys.stdin.reconfigure(errors="surrogateescape")
        while True:
            try:
                line = input(f"{session.user_name}> ")
            except EOFError:
                session.write("")
                return 0
            if not _is_utf8(line):
                session.write("[that line is not UTF-8 text; set your terminal to UTF-8 and type it again]")
                continue
            if not session.handle(line):
                return 0
    for line in lines:
        if echo and line.strip():
            session.write(f"{session.user_name}> {line.strip()}")
        if not session.handle(line):
            break
    return 0
