from matricula_backup.cli import main

main()
