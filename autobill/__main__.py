from autobill.cli import main

main()
