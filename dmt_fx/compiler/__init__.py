"""The compiler: capture, analyses, partitioners, tower-module and interaction kinds, the pass
runner and `transform`. The passes themselves live in the repository's `passes/`
(installed as `dmt_fx.passes`). Never imports the runtime."""
