"""What people see of the platform besides Airflow's own pages: the platform page and a pool's report."""
