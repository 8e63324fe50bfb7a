from stn.results.cli import main

main()
