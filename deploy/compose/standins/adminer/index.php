<?php
// The official adminer image's login defaults, set the way it sets them: the login form Adminer
// prints, with ADMINER_DEFAULT_DRIVER selected and ADMINER_DEFAULT_SERVER, ADMINER_DEFAULT_USER
// and ADMINER_DEFAULT_DB filled in.
function adminer_object()
{
    class StandinAdminer extends Adminer
    {
        public function loginForm()
        {
            ob_start();
            $return = parent::loginForm();
            $form = ob_get_clean();
            $driver = getenv('ADMINER_DEFAULT_DRIVER');
            if ($driver) {
                $driver = $driver === 'mysql' ? 'server' : $driver;
                $form = preg_replace('/<option value="([^"]*)" selected>/', '<option value="$1">', $form);
                $form = str_replace("<option value=\"$driver\">", "<option value=\"$driver\" selected>", $form);
            }
            foreach (['server' => 'ADMINER_DEFAULT_SERVER', 'username' => 'ADMINER_DEFAULT_USER', 'db' => 'ADMINER_DEFAULT_DB'] as $field => $variable) {
                $value = htmlspecialchars(getenv($variable) ?: '');
                $form = preg_replace('/(name="auth\[' . $field . '\]"[^>]*? value=")"/', '${1}' . $value . '"', $form);
            }
            echo $form;
            return $return;
        }
    }
    return new StandinAdminer();
}
include '/usr/share/adminer/adminer.php';
