from sidekick.dispatch import run

run()
