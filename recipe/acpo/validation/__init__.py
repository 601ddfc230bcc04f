"""verl's validation pass as a tool: k samples per prompt of some files, scored and dumped, then read back.

Two tools measure a policy this way, through the recipe's own entry point in validation-only mode
(``python -m recipe.acpo.main_acpo ... trainer.val_only=True``), so that what they measure is what training sees:

- the evaluation (``python -m recipe.acpo.evaluate``): Acc@k and Pass@k of a model on benchmark files;
- the pass-rate pre-pass (``python -m recipe.acpo.pass_rate``): p(q) of each training prompt (§6), written to
  ``extra_info.pass_rate`` for Stage 1's curriculum.

The parts they share:

- :mod:`recipe.acpo.validation.command`: the validation-only command (its Hydra overrides, the run's reward manager
  wrapped so that each dumped sample says where it came from, the interpreter and environment it runs with);
- :mod:`recipe.acpo.validation.tagging_reward_manager`: that wrapper, run by verl: the run's own reward manager, plus
  the fields each tool needs (the benchmark, the row number) copied into every sample's dumped reward information;
- :mod:`recipe.acpo.validation.generations`: what verl dumped, read back (one strict reader), and the one
  correctness rule (a sample's ``acc``, else its score, in [0, 1]; correct above 0);
- :mod:`recipe.acpo.validation.runner`: one runner for the child processes (the shell line printed, the output on
  the console and in the tool's log, a failure naming the log, Ctrl-C forwarded so that verl shuts Ray down).

The evaluation's own parts: :mod:`recipe.acpo.validation.acc_at_k` (the benchmark files and the results table),
:mod:`recipe.acpo.validation.eval_plan` (the model located, the merge and validation commands built) and
:mod:`recipe.acpo.validation.evaluate` (the tool and its command line; ``recipe.acpo.evaluate`` runs it). The
pre-pass's: :mod:`recipe.acpo.validation.pass_rate` (the tool and its command line; ``recipe.acpo.pass_rate`` runs
it), with the data side, which needs no recipe, in ``data_prep.pass_rate``.

Importing the package imports nothing: verl's workers load the reward manager from it by module path.
"""
