from basekiln.cli import main

main()
