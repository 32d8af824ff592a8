"""Training, evaluation and export scripts for HRPose (teacher, student, student + KD)."""
