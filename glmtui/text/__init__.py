"""Everything the CLI and the app both print, as text: no I/O, no widgets.

Each module turns engine records into words once, so a state has one colour and a sentence one wording wherever
it appears: `figures` (durations, losses, speeds), `models` (model folders), `runs` (run states, rows, events, how a
run ended, Slurm's wait), `compare` (runs side by side), `queue` (why a queued run waits, what a queue action did),
`estimate` (a VRAM need), `gpus` (every GPU panel and `glmtui gpus`), `serve` (servers and their requests). Rich
`Text` is returned where a value carries style, so no user-controlled string is ever parsed as markup.
"""
