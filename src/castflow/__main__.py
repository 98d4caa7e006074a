from castflow.cli import main

main()
