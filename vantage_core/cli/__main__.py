from vantage_core.cli import main

main()
